"""The XDP program's lifecycle: compile with bcc, pin, attach, verify, detach, purge.

State that must outlive a process lives under the pin folder (the program and its maps), so
the filter keeps working after this process exits and any later call reaches it. Changes to
that state happen under a file lock in the state folder, and every step may run twice.
"""

from __future__ import annotations

import ctypes as ct
import enum
import fcntl
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccxdp.datapath import libbpf, shared
from ccxdp.datapath.hashing import HashKey
from ccxdp.datapath.settings import SettingError, Settings
from ccxdp.errors import DatapathError, EnvironmentProblem, NotLoadedError

DEFAULT_PIN_DIR = Path("/sys/fs/bpf/ccxdp")
DEFAULT_STATE_DIR = Path("/var/lib/ccxdp")
DEFAULT_DNS_PORTS = (53,)

# IFLA_XDP_FLAGS (linux/if_link.h)
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2


class Mode(enum.StrEnum):
    AUTO = "auto"
    NATIVE = "native"
    GENERIC = "generic"


def check_interface_name(name: str) -> str:
    """The kernel's rule for an interface name: 1-15 bytes (IFNAMSIZ is 16 with its NUL), no
    '/' and no white space. The one check of it, for the CLI and the daemon's config alike."""
    if not name or len(name.encode()) > 15 or "/" in name or any(c.isspace() for c in name):
        raise DatapathError(f"{name!r} is not a valid interface name")
    return name


_MODE_FLAGS = {Mode.NATIVE: XDP_FLAGS_DRV_MODE, Mode.GENERIC: XDP_FLAGS_SKB_MODE}
# What the kernel reports in IFLA_XDP_ATTACHED, as pyroute2 names it.
_ATTACHED_MODE = {"xdp": Mode.NATIVE, "xdpgeneric": Mode.GENERIC}


NAMES_PER_BUCKET = 3


@dataclass(frozen=True)
class Limits:
    """Compile-time sizes, passed to the C as -D flags (each has its #ifndef default there)."""

    max_names: int = 1 << 20
    max_sources: int = 1 << 20

    @property
    def name_buckets(self) -> int:
        # 3 names a bucket of 7 slots when full: few buckets overflow (maps.h), and both
        # buffers take 2 * 64 / 3 = 43 bytes a name, the name filter 8 / 3 more.
        return max(shared.NAME_BUCKETS_MIN, -(-self.max_names // NAMES_PER_BUCKET))

    def cflags(self) -> list[str]:
        return [
            f"-DCCXDP_MAX_SOURCES={self.max_sources}",
            f"-DCCXDP_NAME_BUCKETS={self.name_buckets}",
        ]


@dataclass(frozen=True)
class Attachment:
    ifname: str
    netns: str | None
    mode: Mode | None  # None: ccxdp is not attached there (any more)
    prog_id: int | None

    def as_dict(self) -> dict[str, Any]:
        """The form every command's JSON gives an attachment in."""
        return {
            "interface": self.ifname,
            "netns": self.netns,
            "mode": str(self.mode) if self.mode else None,
            "prog_id": self.prog_id,
            "attached": self.prog_id is not None,
        }


def check_root() -> None:
    if os.geteuid() != 0:
        raise EnvironmentProblem("ccxdp needs root (CAP_BPF and CAP_NET_ADMIN): run it as root")


def check_environment(pin_dir: Path) -> None:
    """Refuse early, with the fix, when root or bpffs is missing."""
    check_root()
    if not _on_bpffs(pin_dir):
        raise EnvironmentProblem(
            f"{pin_dir} is not on a bpf filesystem: the pin folder must be inside a bpffs "
            f"mount ('mount -t bpf bpf /sys/fs/bpf'; scripts/setup.sh does this)"
        )


def _on_bpffs(path: Path) -> bool:
    best, fstype = "", ""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            mnt = fields[1]
            inside = str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best):
                best, fstype = mnt, fields[2]
    return fstype == "bpf"


class Datapath:
    """Owns the pinned program and maps under one pin folder. Use as a context manager: it
    holds the state folder's lock while open."""

    def __init__(
        self,
        pin_dir: Path = DEFAULT_PIN_DIR,
        state_dir: Path = DEFAULT_STATE_DIR,
        extra_cflags: tuple[str, ...] = (),
    ):
        self.pin_dir = Path(pin_dir)
        self.state_dir = Path(state_dir)
        # Tests compile variants with these (-DCCXDP_TEST_NO_TAIL_GROW); users never need them.
        self.extra_cflags = tuple(extra_cflags)
        self._lock_fd: int | None = None

    # -- locking ---------------------------------------------------------------------------
    def __enter__(self) -> Datapath:
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock_fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    @property
    def locked(self) -> bool:
        """Whether this object holds the state folder's lock (inside ``with``)."""
        return self._lock_fd is not None

    # -- paths and maps --------------------------------------------------------------------
    @property
    def prog_pin(self) -> Path:
        return self.pin_dir / shared.PROG_PIN

    @property
    def key_file(self) -> Path:
        return self.state_dir / "hash.key"

    @property
    def catalog_path(self) -> Path:
        return self.state_dir / "catalog.db"

    def is_loaded(self) -> bool:
        return self.prog_pin.exists()

    def open_map(self, name: str) -> libbpf.Map:
        """Open one pinned map with the layout shared.py gives it (checked against the pin)."""
        key_type, value_type = shared.PINNED_MAPS[name]
        path = self.pin_dir / name
        if not path.exists():
            raise NotLoadedError(
                f"ccxdp is not loaded: no pinned map {path} (run 'ccxdp attach IFACE' first)"
            )
        if name == shared.MAP_STATS:
            return libbpf.PerCpuMap.open_pinned(path, key_type, value_type)
        return libbpf.Map.open_pinned(path, key_type, value_type)

    def hash_key(self) -> HashKey:
        """The installation's name-hash key. The pinned key map wins when it holds one: the
        kernel's entries were hashed with it, even if the state folder was lost meanwhile."""
        path = self.pin_dir / shared.MAP_HASH_KEY
        if path.exists():
            with self.open_map(shared.MAP_HASH_KEY) as keys:
                pinned = keys.lookup(ct.c_uint32(0))
            if pinned is not None and any(bytes(pinned)):
                key = HashKey.from_bytes(bytes(pinned))
                key.save(self.key_file)
                return key
        return HashKey.load_or_create(self.key_file)

    # -- load ------------------------------------------------------------------------------
    def build_cflags(self, limits: Limits) -> list[str]:
        # The folder becomes a C string literal: keep to characters that need no escaping.
        if not re.fullmatch(r"[A-Za-z0-9/._+-]+", str(self.pin_dir)):
            raise DatapathError(
                f"pin folder {str(self.pin_dir)!r}: use only letters, digits and / . _ + -"
            )
        return [
            f"-I{shared.bpf_dir()}",
            f'-DCCXDP_PIN_DIR="{self.pin_dir}"',
            *limits.cflags(),
            *self.extra_cflags,
        ]

    def _pinned_max_entries(self, name: str) -> int | None:
        path = self.pin_dir / name
        if not path.exists():
            return None
        fd = libbpf.obj_get(path)
        try:
            return libbpf.map_info(fd).max_entries
        finally:
            libbpf.close(fd)

    def effective_limits(self, wanted: Limits) -> Limits:
        """Maps already pinned keep their size (bcc reuses a pinned map as it is), so the
        program must be compiled for those sizes, not the wanted ones."""
        names = self._pinned_capacity() or wanted.max_names
        sources = self._pinned_max_entries(shared.MAP_SOURCES)
        sources = sources // 2 if sources else wanted.max_sources  # two buffers
        limits = Limits(names, sources)
        buckets = self._pinned_max_entries(shared.MAP_NAME_BUCKETS)
        if buckets is not None and buckets != 2 * limits.name_buckets:
            raise DatapathError(
                f"pinned {shared.MAP_NAME_BUCKETS} holds {buckets} buckets, not the "
                f"{2 * limits.name_buckets} that {names} names need: purge the pins "
                f"('ccxdp detach IFACE --purge') and attach again"
            )
        return limits

    def _pinned_capacity(self) -> int | None:
        """The name table's capacity, set when its maps were made (0 or None: not yet)."""
        path = self.pin_dir / shared.MAP_NAME_ACTIVE
        if not path.exists():
            return None
        with self.open_map(shared.MAP_NAME_ACTIVE) as active:
            return active.lookup(ct.c_uint32(shared.NACT_CAPACITY)).value

    def load(self, limits: Limits = Limits(), dns_ports: Iterable[int] | None = None) -> int:
        """Return an fd of the pinned program, compiling and pinning it first if needed. If
        that fails, whatever this call pinned is removed again."""
        check_environment(self.pin_dir)
        self._refuse_older_pins()
        fresh = not self.prog_pin.exists()
        made_dir = not self.pin_dir.exists()
        before = set(self.pin_dir.iterdir()) if not made_dir else set()
        try:
            self.pin_dir.mkdir(mode=0o700, exist_ok=True)
            os.chmod(self.pin_dir, 0o700)
            if fresh:
                self._compile_and_pin(limits)
            fd = libbpf.obj_get(self.prog_pin)
        except BaseException:
            self._remove_pins(keep=before, remove_dir=made_dir)
            raise
        self._init_maps(dns_ports, self.effective_limits(limits))
        return fd

    def _refuse_older_pins(self) -> None:
        """Pins of an older ccxdp: its program reads maps of other layouts, so this one can
        neither reuse it nor share its folder."""
        if not self.pin_dir.exists():
            return
        older = sorted(
            p.name for p in self.pin_dir.iterdir()
            if p.name.startswith(shared.PROG_PIN_PREFIX) and p.name != shared.PROG_PIN
        )
        if older:
            raise DatapathError(
                f"{self.pin_dir} holds {', '.join(older)} from another ccxdp version: detach it "
                f"everywhere and purge the pins ('ccxdp detach IFACE --purge'), then attach "
                f"again (the catalog and settings are kept)"
            )

    def _remove_pins(self, keep: set[Path] = frozenset(), remove_dir: bool = True) -> list[str]:
        removed = []
        if self.pin_dir.exists():
            for pin in sorted(self.pin_dir.iterdir()):
                if pin not in keep:
                    pin.unlink()
                    removed.append(pin.name)
            if remove_dir and not any(self.pin_dir.iterdir()):
                self.pin_dir.rmdir()
        return removed

    def _compile_and_pin(self, limits: Limits) -> None:
        from ccxdp.datapath.kernel_headers import configure_environment

        configure_environment()
        try:
            from bcc import BPF
        except ImportError as e:
            raise EnvironmentProblem(
                "bcc is not importable (Debian package python3-bpfcc, seen through a venv "
                "made with --system-site-packages): run scripts/setup.sh"
            ) from e
        src = shared.bpf_dir() / "ccxdp.bpf.c"
        try:
            cflags = self.build_cflags(self.effective_limits(limits))
            bpf = BPF(src_file=str(src).encode(), cflags=cflags)
            fn = bpf.load_func(shared.PROG_NAME.encode(), BPF.XDP)
        except Exception as e:  # bcc raises bare Exception; its log went to stderr
            raise DatapathError(f"cannot compile or load {src}: {e}") from e
        try:
            libbpf.obj_pin(fn.fd, self.prog_pin)
        finally:
            bpf.cleanup()

    def _init_maps(self, dns_ports: Iterable[int] | None, limits: Limits) -> None:
        if not self._pinned_capacity():
            with self.open_map(shared.MAP_NAME_ACTIVE) as active:
                active.update(ct.c_uint32(shared.NACT_CAPACITY), ct.c_uint32(limits.max_names))
        key = self.hash_key()
        with self.open_map(shared.MAP_HASH_KEY) as keys:
            keys.update(ct.c_uint32(0), shared.HashKeyLayout.from_buffer_copy(key.to_bytes()))
        if dns_ports is not None:
            self.set_dns_ports(dns_ports)
        elif not self.dns_ports():
            self.set_dns_ports(DEFAULT_DNS_PORTS)
        if self._kernel_settings() is None:
            # New maps: the settings last saved here (say, before a purge), or the defaults.
            self.set_settings(self._saved_settings())

    # -- run-time settings -----------------------------------------------------------------
    @property
    def _settings_file(self) -> Path:
        return self.state_dir / "settings.json"

    def _saved_settings(self) -> Settings:
        try:
            return Settings(**json.loads(self._settings_file.read_text()))
        except FileNotFoundError:
            return Settings()
        except (ValueError, TypeError, SettingError) as e:
            raise DatapathError(f"{self._settings_file}: {e}") from e

    def _settings_lock(self, how: int) -> int:
        """An fd holding the settings' own lock (closing it releases it): writers take turns
        on it whether or not they hold the state folder's lock, and a reader holds it shared
        so that the entry it reads is not rewritten meanwhile."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.state_dir / "settings.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, how)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _kernel_settings(self) -> shared.Config | None:
        """The live entry of the pinned settings (maps.h), or None if never written."""
        fd = self._settings_lock(fcntl.LOCK_SH)
        try:
            with self.open_map(shared.MAP_CONFIG_ACTIVE) as active:
                live = active.lookup(ct.c_uint32(0)).value & 1
            with self.open_map(shared.MAP_CONFIG) as config:
                current = config.lookup(ct.c_uint32(live))
        finally:
            os.close(fd)
        return None if current.default_action == 0 else current

    def _write_kernel_settings(self, settings: Settings) -> None:
        """Wait until no packet can still read the spare entry (the last switch made it
        spare), write it, and switch the live word to it (maps.h). Waiting first means a
        failure changes nothing, and a writer killed after its switch leaves the next one
        waiting as it should."""
        fd = self._settings_lock(fcntl.LOCK_EX)
        try:
            libbpf.wait_for_readers()
            with self.open_map(shared.MAP_CONFIG_ACTIVE) as active, \
                    self.open_map(shared.MAP_CONFIG) as config:
                spare = (active.lookup(ct.c_uint32(0)).value & 1) ^ 1
                config.update(ct.c_uint32(spare), settings.to_kernel())
                active.update(ct.c_uint32(0), ct.c_uint32(spare))
        finally:
            os.close(fd)

    def settings(self) -> Settings:
        """The settings the program uses now (from the pinned map when loaded)."""
        if not (self.pin_dir / shared.MAP_CONFIG).exists():
            return self._saved_settings()
        current = self._kernel_settings()
        return self._saved_settings() if current is None else Settings.from_kernel(current)

    def set_settings(self, settings: Settings) -> None:
        """Apply at once (a whole new set switched in, so a packet sees all of them or none)
        and keep a copy in the state folder for maps made afresh. The copy is written first,
        so a failure leaves the program as it was."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self._settings_file.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(json.dumps(settings.as_dict(), indent=2, sort_keys=True))
            f.flush()
            os.fsync(f.fileno())
        previous = self._settings_file.read_bytes() if self._settings_file.exists() else None
        os.replace(tmp, self._settings_file)
        if (self.pin_dir / shared.MAP_CONFIG).exists():
            try:
                self._write_kernel_settings(settings)
            except OSError:
                if previous is None:
                    self._settings_file.unlink()
                else:
                    self._settings_file.write_bytes(previous)
                raise

    def dns_ports(self) -> list[int]:
        with self.open_map(shared.MAP_PORTS) as ports:
            return [k.value for k, v in ports.lookup_batch() if v.value]

    def set_dns_ports(self, wanted: Iterable[int]) -> None:
        wanted = set(wanted)
        current = set(self.dns_ports())
        with self.open_map(shared.MAP_PORTS) as ports:
            for port in wanted - current:
                ports.update(ct.c_uint32(port), ct.c_uint8(1))
            for port in current - wanted:
                ports.update(ct.c_uint32(port), ct.c_uint8(0))

    # -- attach / detach -------------------------------------------------------------------
    def _ipr(self, netns: str | None):
        from pyroute2 import IPRoute

        if netns is not None and not Path(f"/run/netns/{netns}").exists():
            raise DatapathError(f"no network namespace {netns!r} (see 'ip netns list')")
        return IPRoute(netns=netns)

    @staticmethod
    def _where(ifname: str, netns: str | None) -> str:
        return f"{ifname} in netns {netns}" if netns else ifname

    def _link_index(self, ipr, ifname: str, netns: str | None) -> int:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise DatapathError(f"no interface {self._where(ifname, netns)}", ifname=ifname)
        return found[0]

    @staticmethod
    def _xdp_state(ipr, index: int) -> tuple[Mode | str | None, int | None]:
        xdp = ipr.get_links(index)[0].get_attr("IFLA_XDP")
        if xdp is None:
            return None, None
        attached = xdp.get_attr("IFLA_XDP_ATTACHED")
        prog_id = xdp.get_attr("IFLA_XDP_PROG_ID")
        if not prog_id:
            return None, None
        return _ATTACHED_MODE.get(attached, attached), prog_id

    def pinned_prog_id(self) -> int | None:
        """The kernel's id of the pinned program; None when ccxdp is not loaded."""
        if not self.prog_pin.exists():
            return None
        fd = libbpf.obj_get(self.prog_pin)
        try:
            return libbpf.prog_info(fd).id
        finally:
            libbpf.close(fd)

    def attach(
        self,
        ifname: str,
        mode: Mode = Mode.AUTO,
        netns: str | None = None,
        limits: Limits = Limits(),
        dns_ports: Iterable[int] | None = None,
        on_loaded: Callable[[Datapath], object] | None = None,
    ) -> Attachment:
        """Attach (or keep attached) the program on one interface; returns what the kernel
        reports afterwards. on_loaded runs once the program and its maps are there, before the
        program is attached (the CLI fills the maps from the catalog there). A foreign XDP
        program there is never replaced. The interface is looked up before anything is
        loaded, and a program this call loaded is unloaded again if the attach fails, so a
        failed attach leaves nothing behind."""
        check_environment(self.pin_dir)
        with self._ipr(netns) as ipr:
            index = self._link_index(ipr, ifname, netns)
            fresh = not self.prog_pin.exists()
            prog_fd = self.load(limits, dns_ports)
            try:
                if on_loaded is not None:
                    on_loaded(self)
                return self._attach_loaded(ipr, index, prog_fd, ifname, mode, netns)
            except BaseException:
                if fresh and not any(a.prog_id for a in self.attachments()):
                    self._remove_pins()
                raise
            finally:
                libbpf.close(prog_fd)

    def _attach_loaded(self, ipr, index: int, prog_fd: int, ifname: str, mode: Mode,
                       netns: str | None) -> Attachment:
        prog_id = libbpf.prog_info(prog_fd).id
        current_mode, current_id = self._xdp_state(ipr, index)
        if current_id == prog_id and (mode == Mode.AUTO or mode == current_mode):
            self._remember(ifname, netns)
            return Attachment(ifname, netns, current_mode, prog_id)
        if current_id is not None:
            self._refuse_foreign(ifname, netns, current_id)
        tried = [Mode.NATIVE, Mode.GENERIC] if mode == Mode.AUTO else [mode]
        if current_id is not None and current_mode in tried:
            # Same mode: replace in one step, so the interface is never unfiltered.
            self._set_xdp(ipr, index, prog_fd, _MODE_FLAGS[current_mode])
        else:
            self._attach_first(ipr, index, prog_fd, ifname, netns, tried, current_mode,
                               current_id)
        got_mode, got_id = self._xdp_state(ipr, index)
        if got_id != prog_id:
            raise DatapathError(
                f"attach to {self._where(ifname, netns)} did not take: the kernel reports "
                f"program id {got_id}, expected {prog_id}",
                ifname=ifname,
            )
        self._remember(ifname, netns)
        return Attachment(ifname, netns, got_mode, got_id)

    def _attach_first(self, ipr, index, prog_fd, ifname, netns, tried, old_mode, old_id):
        """Attach in the first mode that works. A ccxdp program running in another mode must
        come off first (native and generic cannot coexist on a device); if no mode works, it
        is put back as it was."""
        old_fd = None
        if old_id is not None:
            old_fd = libbpf.prog_get_fd_by_id(old_id)
            self._set_xdp(ipr, index, -1, _MODE_FLAGS.get(old_mode, 0))
        try:
            errors = []
            for candidate in tried:
                flags = _MODE_FLAGS[candidate] | XDP_FLAGS_UPDATE_IF_NOEXIST
                try:
                    self._set_xdp(ipr, index, prog_fd, flags)
                    return
                except OSError as e:
                    errors.append(f"{candidate}: {os.strerror(e.errno or 0)}")
            restored = ""
            if old_fd is not None:
                self._set_xdp(ipr, index, old_fd, _MODE_FLAGS.get(old_mode, 0))
                restored = f" (the program that ran there, in {old_mode} mode, is back)"
            raise DatapathError(
                f"cannot attach to {self._where(ifname, netns)}: " + "; ".join(errors)
                + restored,
                ifname=ifname,
            )
        finally:
            if old_fd is not None:
                libbpf.close(old_fd)

    def _refuse_foreign(self, ifname: str, netns: str | None, prog_id: int) -> None:
        if self._is_ours(prog_id):
            return
        try:
            fd = libbpf.prog_get_fd_by_id(prog_id)
        except OSError:
            return  # gone meanwhile
        try:
            name = libbpf.prog_info(fd).name
        finally:
            libbpf.close(fd)
        raise DatapathError(
            f"{self._where(ifname, netns)} already has XDP program {name!r} (id {prog_id}), "
            f"which is not this ccxdp's (pins in {self.pin_dir}): ccxdp leaves it alone "
            f"(remove it with 'ip link set dev {ifname} xdp off' if it should go)",
            ifname=ifname,
        )

    def _is_ours(self, prog_id: int) -> bool:
        """The pinned program, or an earlier program of this installation: one that uses the
        name table pinned here. A ccxdp of another pin folder is someone else's."""
        if prog_id == self.pinned_prog_id():
            return True
        names = self.pin_dir / shared.MAP_NAME_BUCKETS
        if not names.exists():
            return False
        map_fd = libbpf.obj_get(names)
        try:
            names_id = libbpf.map_info(map_fd).id
        finally:
            libbpf.close(map_fd)
        try:
            fd = libbpf.prog_get_fd_by_id(prog_id)
        except OSError:
            return False
        try:
            return names_id in libbpf.prog_map_ids(fd)
        finally:
            libbpf.close(fd)

    @staticmethod
    def _set_xdp(ipr, index: int, fd: int, flags: int) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            ipr.link(
                "set",
                index=index,
                IFLA_XDP={"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]},
            )
        except NetlinkError as e:
            raise OSError(e.code, os.strerror(e.code)) from e

    def detach(self, ifname: str, netns: str | None = None) -> Attachment:
        """Remove ccxdp's program from one interface. Refuses to touch a foreign program."""
        check_environment(self.pin_dir)
        with self._ipr(netns) as ipr:
            index = self._link_index(ipr, ifname, netns)
            mode, prog_id = self._xdp_state(ipr, index)
            if prog_id is None:
                self._forget(ifname, netns)
                raise NotLoadedError(
                    f"nothing attached on {self._where(ifname, netns)}", ifname=ifname
                )
            self._refuse_foreign(ifname, netns, prog_id)
            self._set_xdp(ipr, index, -1, _MODE_FLAGS.get(mode, 0))
            self._forget(ifname, netns)
            return Attachment(ifname, netns, mode, prog_id)

    def purge(self) -> list[str]:
        """Remove the pinned program and maps. Refused while ccxdp is attached anywhere, since
        the attached program would go on using maps that no command could reach any more."""
        attached = [a for a in self.attachments() if a.prog_id is not None]
        if attached:
            where = ", ".join(self._where(a.ifname, a.netns) for a in attached)
            raise DatapathError(f"ccxdp is still attached on {where}: detach it there first")
        return self._remove_pins()

    # -- where it is attached --------------------------------------------------------------
    @property
    def _registry(self) -> Path:
        return self.state_dir / "attachments.json"

    def _read_registry(self) -> list[tuple[str, str | None]]:
        try:
            return [tuple(x) for x in json.loads(self._registry.read_text())]
        except FileNotFoundError:
            return []

    def _write_registry(self, entries: list[tuple[str, str | None]]) -> None:
        tmp = self._registry.with_suffix(".tmp")
        tmp.write_text(json.dumps(sorted(set(entries), key=lambda e: (e[1] or "", e[0]))))
        os.replace(tmp, self._registry)

    def _remember(self, ifname: str, netns: str | None) -> None:
        self._write_registry([*self._read_registry(), (ifname, netns)])

    def _forget(self, ifname: str, netns: str | None) -> None:
        self._write_registry([e for e in self._read_registry() if e != (ifname, netns)])

    def attachments(self) -> list[Attachment]:
        """Interfaces ccxdp was attached to, each as the kernel reports it now."""
        ours = self.pinned_prog_id()
        out = []
        for ifname, netns in self._read_registry():
            mode, prog_id = None, None
            try:
                with self._ipr(netns) as ipr:
                    found = ipr.link_lookup(ifname=ifname)
                    if found:
                        mode, prog_id = self._xdp_state(ipr, found[0])
            except DatapathError:
                pass  # its namespace is gone
            if prog_id is not None and prog_id != ours and not self._is_ours(prog_id):
                mode, prog_id = None, None
            out.append(Attachment(ifname, netns, mode if prog_id else None, prog_id))
        return out

