"""haul's benchmark: haul side by side with curl, aria2c, rclone, openssl and boto3.

Run ``.venv/bin/python -m bench`` from the project root; see ``bench/README.md``.
"""
