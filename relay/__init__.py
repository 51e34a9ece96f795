"""bounce-relay's imperative shell: config, SMTP intake, store, delivery, CLI."""
