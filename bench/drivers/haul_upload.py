"""Store one local file into a local store the way haul stores outputs (``upload``).

Usage: ``haul_upload.py FILE STORE_DIR [--timing FILE]``. The file is hashed (md5, sha1, sha256
in one read) and copied to a content-addressed key with the store's conditional create, which
fsyncs the copy before linking it into place.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("file", type=Path)
    parser.add_argument("store_dir", type=Path)
    parser.add_argument("--timing", type=Path)
    args = parser.parse_args()

    from worker.settings import load_settings
    from worker.stores.local import LocalStore
    from worker.transfer.config import TransferConfig
    from worker.transfer.upload import upload

    cfg = TransferConfig.from_settings(load_settings())
    store = LocalStore("bench", args.store_dir)
    started = time.perf_counter()
    result = upload(store, args.file, lambda d: f"sha256/{d.sha256}", cfg)
    elapsed_s = time.perf_counter() - started
    d = result.digests
    print(f"{result.key} size={d.size} md5={d.md5} sha1={d.sha1} sha256={d.sha256}")
    if args.timing:
        args.timing.write_text(f"mode=upload seconds={elapsed_s:.6f}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
