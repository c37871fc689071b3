"""Kernel headers for bcc.

bcc compiles the XDP program against the running kernel's headers. Machines that ship them
(``/lib/modules/$(uname -r)/build``) need nothing. Where the kernel has none, Debian's generic
``linux-headers-<arch>`` package works once its two trees (``…-common`` and ``…-<arch>``) are
merged into one folder; ``BCC_KERNEL_SOURCE`` then points bcc at it.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

MERGED_DIR = Path("/usr/src/ccxdp-kernel-headers")
USR_SRC = Path("/usr/src")


def running_kernel_has_headers() -> bool:
    release = platform.release()
    return (
        Path(f"/lib/modules/{release}/build").exists()
        or Path("/sys/kernel/kheaders.tar.xz").exists()
    )


def _debian_header_trees() -> tuple[Path, Path] | None:
    """The newest (common, arch) pair of Debian header trees under /usr/src."""
    pairs = []
    for common in USR_SRC.glob("linux-headers-*-common"):
        version = common.name[len("linux-headers-") : -len("-common")]
        for arch in USR_SRC.glob(f"linux-headers-{version}-*"):
            if arch != common and (arch / "include").is_dir():
                pairs.append((common, arch))
    if not pairs:
        return None

    def key(pair: tuple[Path, Path]) -> list[int]:
        return [int(n) for n in re.findall(r"\d+", pair[0].name)]

    return max(pairs, key=key)


def prepare(target: Path = MERGED_DIR) -> Path | None:
    """Build the merged tree if this kernel has no headers; return the folder bcc should use."""
    if running_kernel_has_headers():
        return None
    trees = _debian_header_trees()
    if trees is None:
        raise RuntimeError(
            "no kernel headers for this kernel and no Debian linux-headers package under /usr/src"
        )
    stamp = target / ".ccxdp-merged-from"
    wanted = " ".join(str(t) for t in trees)
    if stamp.exists() and stamp.read_text() == wanted:
        return target
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for tree in trees:
        # Symlinks, not copies: the merged folder costs almost nothing and follows upgrades.
        subprocess.run(["cp", "-as", "--remove-destination", f"{tree}/.", str(target)], check=True)
    stamp.write_text(wanted)
    return target


def configure_environment() -> None:
    """Point bcc at the merged tree when the kernel has no headers of its own."""
    if "BCC_KERNEL_SOURCE" in os.environ or running_kernel_has_headers():
        return
    if (MERGED_DIR / ".ccxdp-merged-from").exists():
        os.environ["BCC_KERNEL_SOURCE"] = str(MERGED_DIR)


def main(argv: list[str]) -> int:
    if argv[1:] != ["prepare"]:
        print("usage: python -m ccxdp.datapath.kernel_headers prepare", file=sys.stderr)
        return 2
    folder = prepare()
    print(f"[setup] kernel headers for bcc: {folder or 'the running kernel’s own'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
