#!/usr/bin/env python3
"""health-check.sh's helpers that need Python: the backup's age, the report and the mail decisions.

Usage: health-support.py check-backup STATUS_FILE CALENDAR TIMER_UNIT
         prints "ok<TAB>detail" or "failed<TAB>detail": whether backup.sh's last_success in
         STATUS_FILE is younger than twice the interval of the systemd calendar CALENDAR (the
         longest gap between its next runs, from systemd-analyze; an hour when it cannot tell).
         With no status file yet, a new forge's first backup is awaited as long: from the time
         deploy.sh installed the backup timer's unit file TIMER_UNIT
       health-support.py report RESULTS_FILE [--json]
         prints the checks (RESULTS_FILE: one "name<TAB>status<TAB>detail<TAB>action" line each),
         one line a check, or with --json {checks, failed, ok, checked_at}; names every failed
         check on stderr; exit 0 when all passed, 1 when one failed
       health-support.py notify RESULTS_FILE STATE_FILE REMINDER_HOURS
         compares the checks with the last state (STATE_FILE, written anew, mode 0644) and prints
         the mail to send (the subject, an empty line, the body) or nothing: a mail when the set of
         failed checks changes (failing, recovered) and a reminder every REMINDER_HOURS while it
         stays the same, never one on every failing run
       health-support.py metrics OUT_FILE RESULTS_FILE CALENDAR BACKUP_STATUS DRILL_STATUS UPDATE_STATUS
         writes the state of backups, restore drills, updates and these checks as Prometheus metrics
         (text format, mode 0644, atomically) for node_exporter's textfile collector: the alert
         rules read them (docs/monitoring.md). A status file not written yet gives no metric.
Exit codes: 0 done (report: every check passed); 1 report: a check failed, or an error; 2 bad usage.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import subprocess
import sys
from pathlib import Path

RUNBOOK = "docs/runbooks/health.md"
FALLBACK_INTERVAL_S = 3600  # backupSchedule's default, hourly
ELAPSE = re.compile(r"(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def iso(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(datetime.timezone.utc)


def duration(seconds: float) -> str:
    """3h 5min, 2 days 4h, 45s: what a person reads in a mail."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    if days:
        return f"{days} day{'s' if days != 1 else ''} {hours}h"
    if hours:
        return f"{hours}h {minutes}min"
    return f"{minutes}min" if minutes else f"{seconds}s"


def schedule_interval(calendar: str) -> int | None:
    """The longest gap between the next runs of a systemd calendar (seconds), or None."""
    try:
        output = subprocess.run(["systemd-analyze", "calendar", "--iterations=8", calendar],
                                capture_output=True, text=True, timeout=30, env={**os.environ, "TZ": "UTC"})
    except (OSError, subprocess.TimeoutExpired):
        return None
    runs = [datetime.datetime.fromisoformat(found) for found in ELAPSE.findall(output.stdout)]
    gaps = [int((later - earlier).total_seconds()) for earlier, later in zip(runs, runs[1:])]
    return max(gaps) if output.returncode == 0 and gaps else None


def check_backup(status_file: str, calendar: str, timer_unit: str) -> tuple[str, str]:
    interval = schedule_interval(calendar)
    assumed = ""
    if interval is None:
        interval, assumed = FALLBACK_INTERVAL_S, f" (systemd-analyze could not read the schedule '{calendar}': an hour assumed)"
    limit = 2 * interval
    try:
        status = json.loads(Path(status_file).read_text())
    except FileNotFoundError:
        return first_backup_awaited(status_file, timer_unit, limit, calendar, assumed)
    except (OSError, ValueError) as error:
        return "failed", f"cannot read {status_file}: {error}"
    last_success = status.get("last_success") if isinstance(status, dict) else None
    if not last_success:
        return "failed", f"no backup has succeeded yet ({status_file} has no last_success){assumed}"
    try:
        age = (now() - parse_iso(last_success)).total_seconds()
    except ValueError:
        return "failed", f"{status_file}: last_success is not a time: {last_success!r}"
    last_run = ""
    if status.get("state") == "failed":
        last_run = f"; the last run failed: {status.get('message', '?')}"
    detail = (f"the last successful backup finished at {last_success}, {duration(max(age, 0))} ago; the limit is "
              f"{duration(limit)} (twice the schedule '{calendar}'){assumed}{last_run}")
    return ("ok" if age <= limit else "failed"), detail


def first_backup_awaited(status_file: str, timer_unit: str, limit: int, calendar: str, assumed: str) -> tuple[str, str]:
    """No status file: fine for a new forge whose backup timer was installed less than `limit` ago."""
    missing = f"no backup has succeeded yet: {status_file} is missing"
    try:
        installed = os.stat(timer_unit).st_mtime
    except OSError:
        return "failed", f"{missing} and the backup timer {timer_unit} is not installed{assumed}"
    waited = now().timestamp() - installed
    detail = (f"{missing}; the backup timer was installed {duration(max(waited, 0))} ago and the first backup is "
              f"due within {duration(limit)} (twice the schedule '{calendar}'){assumed}")
    return ("ok" if waited <= limit else "failed"), detail


def read_results(results_file: str) -> list[dict]:
    checks = []
    for line in Path(results_file).read_text().splitlines():
        name, status, detail, action = (line.split("\t") + ["", "", ""])[:4]
        checks.append({"name": name, "status": status, "detail": detail, "action": action if status != "ok" else ""})
    return checks


def report(results_file: str, as_json: bool) -> int:
    checks = read_results(results_file)
    failed = [check["name"] for check in checks if check["status"] != "ok"]
    if as_json:
        print(json.dumps({"checks": checks, "failed": failed, "ok": not failed, "checked_at": iso(now())}, indent=2))
    else:
        width = max((len(check["name"]) for check in checks), default=0)
        for check in checks:
            mark = "✔ ok    " if check["status"] == "ok" else "✘ FAILED"
            print(f"{mark} {check['name']:<{width}}  {check['detail']}")
            if check["action"]:
                print(f"{'':<{width + 11}}what to do first: {check['action']}")
    if failed:
        print(f"health-check.sh: {len(failed)} of {len(checks)} checks FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def failure_text(checks: list[dict]) -> str:
    lines = []
    for check in checks:
        if check["status"] != "ok":
            lines += [f"✘ {check['name']}: {check['detail']}", f"  What to do first: {check['action']}", ""]
    passed = [check["name"] for check in checks if check["status"] == "ok"]
    lines.append(f"Passing: {', '.join(passed) or 'none'}.")
    return "\n".join(lines)


def mail_for(checks: list[dict], state: dict, reminder_hours: float, moment: datetime.datetime) -> tuple[str, str] | None:
    """(subject, body) of the mail this run sends, or None; updates `state` in place."""
    failed = [check["name"] for check in checks if check["status"] != "ok"]
    before = list(state.get("failed") or [])
    footer = (f"\n\nWhat each check means and what to do: {RUNBOOK} in the gitea-stack repository.\n"
              f"Run the checks by hand on the host: /opt/gitea-stack/scripts/health-check.sh")
    if failed != before:
        state["since"] = iso(moment)
    state.update(failed=failed, checked_at=iso(moment))
    if failed and failed != before:
        state["last_mail"] = iso(moment)
        recovered = [name for name in before if name not in failed]
        still = [name for name in before if name in failed]
        news = ""
        if before:
            news = (f"Still failing since the last mail: {', '.join(still) or 'none'}; "
                    f"recovered: {', '.join(recovered) or 'none'}.\n\n")
        return (f"health check FAILED: {', '.join(failed)}",
                f"The health check of the forge found {len(failed)} of {len(checks)} checks failing:\n\n"
                f"{news}{failure_text(checks)}{footer}")
    if not failed and before:
        state["last_mail"] = iso(moment)
        return (f"health check recovered: {', '.join(before)} pass again",
                f"Every health check passes again ({len(checks)} checks). These had failed: "
                f"{', '.join(before)}.{footer}")
    if failed:
        last_mail = state.get("last_mail")
        try:
            due = last_mail is None or (moment - parse_iso(last_mail)).total_seconds() >= reminder_hours * 3600
        except ValueError:
            due = True
        if due:
            state["last_mail"] = iso(moment)
            since = state.get("since") or "?"
            return (f"health check still FAILING: {', '.join(failed)}",
                    f"Reminder: these health checks have been failing since {since}:\n\n"
                    f"{failure_text(checks)}{footer}")
    return None


def write_public(path: Path, text: str) -> None:
    """Atomically (a reader never sees half a file), mode 0644: names, times and states, no secrets."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.chmod(0o644)
    temporary.replace(path)


def write_state(state_file: Path, state: dict) -> None:
    write_public(state_file, json.dumps(state, indent=2) + "\n")


def notify(results_file: str, state_file: str, reminder_hours: str) -> int:
    try:
        hours = float(reminder_hours)
    except ValueError:
        print(f"health-support.py: REMINDER_HOURS must be a number of hours, got {reminder_hours!r}", file=sys.stderr)
        return 2
    path = Path(state_file)
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        state = {}
    except (OSError, ValueError) as error:
        print(f"health-support.py: {state_file} is unreadable ({error}); starting from a clean state",
              file=sys.stderr)
        state = {}
    mail = mail_for(read_results(results_file), state, hours, now())
    write_state(path, state)
    if mail:
        print(f"{mail[0]}\n\n{mail[1]}")
    return 0


# Update outcomes that leave the service on the image it should run.
UPDATE_SUCCEEDED = ("updated", "up-to-date")


def read_json(path: str) -> dict:
    """A status file as a dict; empty when it is missing or unreadable (its metrics are then absent)."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def timestamp(text: object) -> float | None:
    try:
        return parse_iso(str(text)).timestamp() if text else None
    except ValueError:
        return None


def label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def metrics_text(checks: list[dict], interval: int, backup: dict, drill: dict, updates: dict,
                 moment: datetime.datetime) -> str:
    """The metrics of docs/monitoring.md in Prometheus' text format."""
    families: list[tuple[str, str, list[tuple[str, float]]]] = []

    def family(name: str, help_text: str, samples: list[tuple[str, float | None]]) -> None:
        present = [(labels, value) for labels, value in samples if value is not None]
        if present:
            families.append((name, help_text, present))

    family("gitea_stack_backup_interval_seconds", "Longest gap between two runs of the backup schedule.",
           [("", float(interval))])
    family("gitea_stack_backup_last_run_timestamp_seconds", "When the last backup run finished.",
           [("", timestamp(backup.get("finished")))])
    family("gitea_stack_backup_last_run_success", "1 if the last backup run succeeded, 0 if it failed.",
           [("", float(backup["state"] == "ok") if "state" in backup else None)])
    family("gitea_stack_backup_last_success_timestamp_seconds", "When the last successful backup run finished.",
           [("", timestamp(backup.get("last_success")))])
    family("gitea_stack_restore_drill_last_run_timestamp_seconds", "When the last restore drill finished.",
           [("", timestamp(drill.get("finished")))])
    family("gitea_stack_restore_drill_last_run_success", "1 if the last restore drill succeeded, 0 if it failed.",
           [("", float(drill["state"] == "ok") if "state" in drill else None)])
    services = sorted((updates.get("services") or {}).items())
    family("gitea_stack_update_last_run_timestamp_seconds", "When update.sh last ran for a service.",
           [(f'service="{label_value(name)}"', timestamp(run.get("at"))) for name, run in services])
    family("gitea_stack_update_last_run_success",
           "1 if update.sh's last run for a service left it updated or up to date, 0 if not (rolled back, failed).",
           [(f'service="{label_value(name)}"', float(run.get("outcome") in UPDATE_SUCCEEDED)) for name, run in services])
    family("gitea_stack_health_check_success", "1 if the health check passed, 0 if it failed.",
           [(f'check="{label_value(check["name"])}"', float(check["status"] == "ok")) for check in checks])
    family("gitea_stack_health_check_last_run_timestamp_seconds", "When health-check.sh last ran its checks.",
           [("", moment.timestamp())])
    lines = []
    for name, help_text, samples in families:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines += [f"{name}{{{labels}}} {value!r}" if labels else f"{name} {value!r}" for labels, value in samples]
    return "\n".join(lines) + "\n"


def write_metrics(out_file: str, results_file: str, calendar: str, backup_status: str, drill_status: str,
                  update_status: str) -> int:
    interval = schedule_interval(calendar) or FALLBACK_INTERVAL_S
    text = metrics_text(read_results(results_file), interval, read_json(backup_status), read_json(drill_status),
                        read_json(update_status), now())
    write_public(Path(out_file), text)  # node_exporter reads it as another user
    return 0


def main(argv: list[str]) -> int:
    command, arguments = (argv[1], argv[2:]) if len(argv) > 1 else ("", [])
    if command in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if command == "check-backup" and len(arguments) == 3:
        status, detail = check_backup(*arguments)
        print(f"{status}\t{detail}")
        return 0
    if command == "report" and len(arguments) in (1, 2) and arguments[1:] in ([], ["--json"]):
        return report(arguments[0], as_json=arguments[1:] == ["--json"])
    if command == "notify" and len(arguments) == 3:
        return notify(*arguments)
    if command == "metrics" and len(arguments) == 6:
        return write_metrics(*arguments)
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
