"""S3 session store plugin (extra ``oblix[s3]``); being built, registers nothing yet."""
