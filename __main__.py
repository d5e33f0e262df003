"""gitea-stack: `pulumi up` brings up a production Gitea forge on AWS (see README.md)."""

from gitea_stack.program import main

main()
