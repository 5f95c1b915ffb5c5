"""The printed table: one row per figure, one column per run (our daemon with each D-Bus
library, libvirt-dbus), the ratio to libvirt-dbus and the target (printed, not asserted)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .workloads import Config, Failure, Results

HIGHER, LOWER = "higher", "lower"


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str            # "vol/s", "ms", "us", "s", "MiB", "%", "rounds" (a count)
    better: str          # HIGHER or LOWER
    target: str = ""
    # (ours, libvirt) -> True/False/None (None: cannot tell); ``ours`` is the whole Results
    check: Callable[[Results, Results | None], bool | None] | None = None
    compared: bool = True   # print the ratio to libvirt-dbus (not for the bench's own cost)


def _value(results: Results | None, key: str) -> float | None:
    if results is None:
        return None
    v = results.get(key)
    return v if isinstance(v, (int, float)) else None


def _ratio_check(key: str, factor: float, better: str):
    def check(ours: Results, theirs: Results | None) -> bool | None:
        a, b = _value(ours, key), _value(theirs, key)
        if a is None or b is None or a == 0 or b == 0:
            return None
        return (a / b if better == HIGHER else b / a) >= factor
    return check


def _get_vs_ping(ours: Results, _theirs: Results | None) -> bool | None:
    get, ping = _value(ours, "get_median"), _value(ours, "ping_median")
    if get is None or ping is None:
        return None
    return get <= 1.3 * ping


def _at_most(key: str, limit: float):
    def check(ours: Results, _theirs: Results | None) -> bool | None:
        v = _value(ours, key)
        return None if v is None else v <= limit
    return check


def rows(cfg: Config, other_client: str = "") -> list[Row]:
    clone = f"clone {cfg.clone_capacity >> 20} MiB vol, {cfg.clone_data >> 20} MiB data"
    return [
        Row("create_rate", f"create {cfg.volumes} raw {cfg.volume_size >> 20} MiB volumes",
            "vol/s", HIGHER, ">= 2x libvirt-dbus", _ratio_check("create_rate", 2, HIGHER)),
        Row("delete_rate", f"delete those {cfg.volumes} volumes", "vol/s", HIGHER,
            ">= 2x libvirt-dbus", _ratio_check("delete_rate", 2, HIGHER)),
        Row("client_cpu_create", "  the bench client's CPU per create call", "us", LOWER,
            compared=False),
        Row("client_cpu_delete", "  the bench client's CPU per delete call", "us", LOWER,
            compared=False),
        Row("steal_create_delete", "  CPU time taken by the hypervisor meanwhile", "%",
            LOWER, compared=False),
        Row("rounds_rerun", f"  rounds run again (hypervisor took > "
            f"{cfg.max_round_steal:.0%})", "rounds", LOWER, compared=False),
        Row("get_median", "Properties.Get(Name) of a volume, median", "us", LOWER,
            "<= 1.3x Ping (median)", _get_vs_ping),
        Row("get_p99", "Properties.Get(Name), p99", "us", LOWER),
        Row("ping_median", "Peer.Ping to the service, median", "us", LOWER),
        Row("ping_p99", "Peer.Ping, p99", "us", LOWER),
        Row("list_small", f"list {cfg.volumes} volumes + properties", "ms", LOWER),
        Row("list_small_info", f"  libvirt: + GetInfo per volume ({cfg.volumes})", "ms", LOWER),
        Row("big_pool_start", f"start a dir pool holding {cfg.big} files", "ms", LOWER),
        Row("refresh_big", f"Refresh that pool ({cfg.big} volumes)", "ms", LOWER),
        Row("list_big", f"list {cfg.big} volumes + properties", "ms", LOWER,
            "<= 300 ms", _at_most("list_big", 0.300)),
        Row("list_big_other_client", f"  the same listing, {other_client} client", "ms",
            LOWER),
        Row("list_big_info", f"  libvirt: + GetInfo per volume ({cfg.big})", "ms", LOWER),
        Row("rss_big", f"service RSS after listing {cfg.big} volumes", "MiB", LOWER),
        Row("clone_ext4", f"{clone}, ext4", "s", LOWER, ">= 5x faster than libvirt",
            _ratio_check("clone_ext4", 5, LOWER)),
        Row("clone_xfs", f"{clone}, xfs (reflink)", "s", LOWER, ">= 5x faster than libvirt",
            _ratio_check("clone_xfs", 5, LOWER)),
        Row("clone_xfs_reflink", "  libvirt with VIR_STORAGE_VOL_CREATE_REFLINK, xfs", "s",
            LOWER),
        Row("uevent_median", "uevent -> Manager.DeviceChanged, median", "ms", LOWER),
        Row("uevent_p95", "uevent -> Manager.DeviceChanged, p95", "ms", LOWER),
        Row("uevent_raw_median", "  (raw kernel uevent to a pyudev peer, median)", "ms", LOWER),
        Row("startup_empty", "daemon start-up, no pools", "s", LOWER),
        Row("startup_big", f"daemon start-up with {cfg.big} volumes (autostart pool)", "s",
            LOWER),
        Row("rss_startup_big", f"daemon RSS after start-up with {cfg.big} volumes", "MiB",
            LOWER),
    ]


SCALE = {"vol/s": 1, "ms": 1e3, "us": 1e6, "s": 1, "MiB": 1 / 1024, "%": 100, "rounds": 1}


def fmt(value: object, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, Failure):
        return "FAILED"
    if isinstance(value, str):
        return value
    if unit == "rounds":
        return f"{int(value)}"
    v = float(value) * SCALE[unit]
    if unit == "s" and v < 1:
        v, unit = v * 1e3, "ms"
    if v >= 100:
        return f"{v:.0f} {unit}"
    if v >= 10:
        return f"{v:.1f} {unit}"
    return f"{v:.2f} {unit}"


def ratio(ours: object, theirs: object, better: str) -> str:
    if not isinstance(ours, (int, float)) or not isinstance(theirs, (int, float)):
        return ""
    if ours == 0 or theirs == 0:
        return ""
    r = ours / theirs if better == HIGHER else theirs / ours
    return f"{r:.2f}x"


def render(cfg: Config, results: dict[str, Results], libraries: list[str],
           libvirt: Results | None, other_client: str = "") -> str:
    """The table as text. ``results`` maps a D-Bus library name to our figures;
    ``other_client`` names the client library of the second big listing."""
    cols = [f"ours/{lib}" for lib in libraries] + (["libvirt-dbus"] if libvirt else [])
    width_label = 52
    head = f"{'figure':<{width_label}}" + "".join(f"{c:>15}" for c in cols)
    if libvirt:
        head += "".join(f"{'x lv (' + lib.split('-')[1] + ')':>13}" for lib in libraries)
    head += "   target"
    lines = [head, "-" * len(head)]
    failures = []
    for row in rows(cfg, other_client):
        values = [results[lib].get(row.key) for lib in libraries]
        theirs = libvirt.get(row.key) if libvirt else None
        if all(v is None for v in values) and theirs is None:
            continue
        line = f"{row.label:<{width_label}}"
        line += "".join(f"{fmt(v, row.unit):>15}" for v in values)
        if libvirt:
            line += f"{fmt(theirs, row.unit) if row.key in libvirt else 'n/a':>15}"
            line += "".join(f"{ratio(v, theirs, row.better) if row.compared else '':>13}"
                            for v in values)
        if row.target:
            verdicts = []
            for lib in libraries:
                ok = row.check(results[lib], libvirt) if row.check else None
                verdicts.append(f"{lib.split('-')[1]}: "
                                f"{'met' if ok else 'MISSED' if ok is False else '?'}")
            line += f"   {row.target} ({', '.join(verdicts)})"
        lines.append(line)
        for name, v in [*zip(libraries, values, strict=True), ("libvirt-dbus", theirs)]:
            if isinstance(v, Failure):
                failures.append(f"{row.key} [{name}]: {v.message}")
    if failures:
        lines.append("")
        lines.append("failed figures:")
        lines.extend(f"  {f}" for f in dict.fromkeys(failures))
    return "\n".join(lines)
