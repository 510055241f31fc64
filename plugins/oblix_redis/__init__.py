"""Redis session store plugin (extra ``oblix[redis]``); being built, registers nothing yet."""
