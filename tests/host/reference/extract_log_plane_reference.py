"""Regenerates the checked-in references of the log plane's configuration from upstream sources.

    python3 tests/host/reference/extract_log_plane_reference.py LOKI_GIT_DIR LOKI_REF ALLOY_GIT_DIR ALLOY_REF

LOKI_GIT_DIR / ALLOY_GIT_DIR are git directories of github.com/grafana/loki and github.com/grafana/alloy
(bare mirrors are fine: files are read with `git show REF:PATH`, nothing is built or run). Writes
  loki/config-reference.json   every block and key of Loki's configuration reference
                               (docs/sources/shared/configuration.md), with each key's documented type;
  alloy/components-reference.json  the arguments, blocks and exports of the Alloy components and
                               configuration blocks tests/host/test_log_plane_config.py may meet, from
                               their reference pages (docs/sources/reference/...), shared includes
                               resolved.
Each file starts with a `source` header: repository, ref, commit, path(s). The tests read only the
JSON; this script is how it was made and how to remake it for another pinned version.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOKI_DOC = "docs/sources/shared/configuration.md"
ALLOY_DOCS = "docs/sources/reference"
ALLOY_SHARED = "docs/sources/shared"
# The components (and configuration blocks) a log pipeline of this project may use.
ALLOY_PAGES = {
    "local.file_match": "components/local/local.file_match.md",
    "loki.source.file": "components/loki/loki.source.file.md",
    "loki.source.journal": "components/loki/loki.source.journal.md",
    "loki.source.docker": "components/loki/loki.source.docker.md",
    "loki.process": "components/loki/loki.process.md",
    "loki.relabel": "components/loki/loki.relabel.md",
    "loki.write": "components/loki/loki.write.md",
    "logging": "config-blocks/logging.md",
}
CONFIG_BLOCKS = {"logging"}


def git_show(git_dir: str, ref: str, path: str) -> str:
    return subprocess.run(["git", "-C", git_dir, "show", f"{ref}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def git_commit(git_dir: str, ref: str) -> str:
    return subprocess.run(["git", "-C", git_dir, "rev-parse", f"{ref}^{{commit}}"], check=True,
                          capture_output=True, text=True).stdout.strip()


# --- Loki ------------------------------------------------------------------------------------------

INLINE = re.compile(r"^\[<(?P<block>\w+)>\]$")
LEAF = re.compile(r"^\[(?P<key>\w*): (?P<type><[^|]*?>)\s*(?:\| default = (?P<default>.*))?\]$")
NESTED = re.compile(r"^(?P<key>\w+):$")


def yaml_blocks(markdown: str) -> list[tuple[str, str]]:
    """(heading, yaml code) for every ```yaml block, with the last `### ` heading before it."""
    heading, blocks, code = "", [], None
    for line in markdown.splitlines():
        if code is not None:
            if line.strip() == "```":
                blocks.append((heading, "\n".join(code)))
                code = None
            else:
                code.append(line)
        elif re.match(r"#{1,6} ", line):
            heading = line.lstrip("#").strip()
        elif line.strip() == "```yaml":
            code = []
    return blocks


def parse_loki_block(code: str) -> dict:
    """The tree of one reference block: key -> {"type": ...} | {"ref": block} | {"children": {...}}."""
    root: dict = {}
    stack: list[tuple[int, dict]] = [(-1, root)]
    for raw in code.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        if match := INLINE.match(stripped):
            # A block whose keys sit at this level (a squashed Go struct).
            parent.setdefault("<inline>", {"inline": []})["inline"].append(match["block"])
        elif match := LEAF.match(stripped):
            # An empty key: the block is a map whose keys are free ("<any>").
            parent[match["key"] or "<any>"] = {"type": match["type"][1:-1]}
        elif match := NESTED.match(stripped):
            children: dict = {}
            parent[match["key"]] = {"children": children}
            stack.append((indent, children))
        else:
            raise ValueError(f"unexpected line in Loki's configuration reference: {raw!r}")
    return root


def link_loki_refs(node: dict, names: set[str]) -> None:
    """A key whose type is a documented block (or a list of one) refers to that block."""
    for spec in node.values():
        if "inline" in spec:
            continue
        if "children" in spec:
            link_loki_refs(spec["children"], names)
            continue
        kind = spec["type"]
        if kind in names:
            spec["ref"] = kind
        elif (list_of := re.fullmatch(r"list of (\w+?)s", kind)) and list_of[1] in names:
            spec["list_of"] = list_of[1]


def loki_reference(git_dir: str, ref: str) -> dict:
    markdown = git_show(git_dir, ref, LOKI_DOC)
    root, blocks = None, {}
    for heading, code in yaml_blocks(markdown):
        if heading.startswith("Supported contents"):
            root = parse_loki_block(code)
        elif re.fullmatch(r"\w+", heading):
            try:
                blocks.setdefault(heading, {}).update(parse_loki_block(code))
            except ValueError:
                # An example in a block's prose (named_stores_config), not the block's reference.
                if "storage_config:" not in code:
                    raise
    assert root is not None and blocks, "the layout of configuration.md changed"
    for tree in (root, *blocks.values()):
        link_loki_refs(tree, set(blocks))
    return {"source": {"repository": "https://github.com/grafana/loki", "ref": ref,
                       "commit": git_commit(git_dir, ref), "path": LOKI_DOC},
            "root": root, "blocks": dict(sorted(blocks.items()))}


# --- Alloy -----------------------------------------------------------------------------------------

HEADING = re.compile(r"^(#{2,5}) (.*)$")
SHARED = re.compile(r'\{\{<\s*docs/shared\s+lookup="([^"]+)".*?>\}\}')
CODE_NAME = re.compile(r"`([^`]+)`")


def resolve_shared(git_dir: str, ref: str, text: str, depth: int = 0) -> str:
    def include(match: re.Match) -> str:
        included = git_show(git_dir, ref, f"{ALLOY_SHARED}/{match[1]}")
        included = re.sub(r"(?s)\A---\n.*?\n---\n", "", included)
        return resolve_shared(git_dir, ref, included, depth + 1) if depth < 3 else included
    return SHARED.sub(include, text)


def sections(markdown: str) -> list[tuple[int, str, list[str]]]:
    """(heading level, heading text, lines) for each heading; code blocks are skipped."""
    result: list[tuple[int, str, list[str]]] = [(1, "", [])]
    in_code = False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        if not in_code and (match := HEADING.match(line)):
            result.append((len(match[1]), match[2].strip(), []))
        elif not in_code:
            result[-1][2].append(line)
    return result


def tables(lines: list[str]) -> list[tuple[list[str], list[list[str]]]]:
    """Markdown tables: (header cells, rows of cells)."""
    found, current = [], None
    for line in lines + [""]:
        if line.strip().startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if current is None:
                current = (cells, [])
            elif not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
                current[1].append(cells)
        elif current is not None:
            found.append(current)
            current = None
    return found


def first_code_name(cell: str) -> str | None:
    match = CODE_NAME.search(cell)
    return match[1] if match else None


def alloy_page(git_dir: str, ref: str, path: str) -> dict:
    markdown = resolve_shared(git_dir, ref, git_show(git_dir, ref, f"{ALLOY_DOCS}/{path}"))
    page: dict = {"path": f"{ALLOY_DOCS}/{path}", "arguments": {}, "blocks": {}, "top_blocks": [],
                  "exports": []}

    def arguments(lines: list[str]) -> dict[str, dict]:
        result = {}
        for header, rows in tables(lines):
            if header[:2] == ["Name", "Type"]:
                required_column = header.index("Required") if "Required" in header else None
                for row in rows:
                    if name := first_code_name(row[0]):
                        required = required_column is not None and row[required_column].lower() == "yes"
                        result[name] = {"type": row[1].strip("`"), "required": required}
        return result

    def block_rows(lines: list[str]) -> list[list[str]]:
        """Block tables (a name column and a Required column, no Type): each row as its path."""
        paths = []
        for header, rows in tables(lines):
            if header[0] in ("Block", "Name") and "Type" not in header and "Required" in header:
                for row in rows:
                    path = [name for name in CODE_NAME.findall(row[0])]
                    if path:
                        paths.append(path)
        return paths

    all_sections = sections(markdown)
    top_stage_names: list[str] = []
    for level, heading, lines in all_sections:
        if level == 2 and heading == "Arguments":
            page["arguments"] = arguments(lines)
        elif level == 2 and heading == "Blocks":
            for row in block_rows(lines):
                for parent, child in zip([None, *row[:-1]], row):
                    page["blocks"].setdefault(child, {"arguments": {}, "blocks": []})
                    if parent is None:
                        if child not in page["top_blocks"]:
                            page["top_blocks"].append(child)
                    else:
                        siblings = page["blocks"].setdefault(parent, {"arguments": {}, "blocks": []})["blocks"]
                        if child not in siblings:
                            siblings.append(child)
            top_stage_names = list(page["top_blocks"])
        elif level == 2 and heading == "Exported fields":
            page["exports"] = [name for _, rows in tables(lines) for row in rows
                               if (name := first_code_name(row[0]))]
    for level, heading, lines in all_sections:
        if level >= 3 and (match := re.fullmatch(r"`([\w.]+)`", heading)) and match[1] in page["blocks"]:
            block = page["blocks"][match[1]]
            block["arguments"].update(arguments(lines))
            for row in block_rows(lines):
                for child in row[-1:]:
                    if child not in block["blocks"]:
                        block["blocks"].append(child)
                    page["blocks"].setdefault(child, {"arguments": {}, "blocks": []})
            # stage.match: "It supports all the same `stage.NAME` blocks as ... the top level".
            if any("supports all the same `stage.NAME` blocks" in line for line in lines):
                block["blocks"] = list(dict.fromkeys(block["blocks"] + top_stage_names))
    # Blocks documented only below their parent (metric.counter under stage.metrics): a second pass.
    for level, heading, lines in all_sections:
        if level >= 3 and (match := re.fullmatch(r"`([\w.]+)`", heading)) and match[1] in page["blocks"]:
            page["blocks"][match[1]]["arguments"].update(arguments(lines))
    return page


# Go sources whose `alloy:"name,attr|block|enum"` struct tags define what the components accept: a
# second, code-side witness for every argument and block name the documentation lists.
ALLOY_CODE = ["internal/component/loki", "internal/component/local", "internal/component/common",
              "internal/component/discovery", "internal/alloycli", "internal/runtime/logging"]
TAG = re.compile(r'alloy:"([a-z_][a-z0-9_.]*),(?:attr|block|enum)')


def alloy_code_tags(git_dir: str, ref: str) -> list[str]:
    listing = subprocess.run(["git", "-C", git_dir, "grep", "-h", "-o", "-E",
                              r'alloy:"[a-z_][a-z0-9_.]*,(attr|block|enum)', ref, "--", *ALLOY_CODE],
                             check=False, capture_output=True, text=True).stdout
    return sorted({match[1] for match in TAG.finditer(listing)})


def alloy_reference(git_dir: str, ref: str) -> dict:
    pages = {name: alloy_page(git_dir, ref, path) for name, path in ALLOY_PAGES.items()}
    for name, page in pages.items():
        page["kind"] = "config-block" if name in CONFIG_BLOCKS else "component"
    return {"source": {"repository": "https://github.com/grafana/alloy", "ref": ref,
                       "commit": git_commit(git_dir, ref), "paths": "docs/sources/reference/** and "
                       "docs/sources/shared/** (includes)"},
            "components": pages,
            "code_tags": {"paths": ALLOY_CODE, "names": alloy_code_tags(git_dir, ref)}}


def main(argv: list[str]) -> None:
    loki_dir, loki_ref, alloy_dir, alloy_ref = argv
    for path, data in (("loki/config-reference.json", loki_reference(loki_dir, loki_ref)),
                       ("alloy/components-reference.json", alloy_reference(alloy_dir, alloy_ref))):
        target = HERE / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
        print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
