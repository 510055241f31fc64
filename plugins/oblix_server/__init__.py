"""``oblix server`` plugin (extra ``oblix[server]``); being built, registers nothing yet."""
