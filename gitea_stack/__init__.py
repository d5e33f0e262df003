"""gitea-stack: a production Gitea forge on AWS as a Pulumi program."""
