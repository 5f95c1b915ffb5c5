"""The files under dbus/ agree with the daemon: the command lines parse with its own
options, the names match, the bus policy is valid XML that lets only root own the name."""

import configparser
import shlex
from pathlib import Path

from example_storage.adapter.paths import BUS_NAME
from example_storage.daemon import parse_args
from lxml import etree

DBUS_DIR = Path(__file__).resolve().parents[2] / "dbus"


def _ini(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read(DBUS_DIR / name)
    return parser


def _daemon_args(command: str):
    argv = shlex.split(command)
    assert argv[0] == "/usr/bin/example-storaged"
    return parse_args(argv[1:])


def test_activation_file():
    service = _ini("org.example.Storage.service")["D-BUS Service"]
    assert service["Name"] == BUS_NAME
    assert service["User"] == "root"
    assert service["SystemdService"] == "example-storaged.service"
    assert _daemon_args(service["Exec"]).bus == "system"


def test_systemd_unit():
    unit = _ini("example-storaged.service")
    assert unit["Service"]["Type"] == "notify"      # the daemon sends READY=1
    assert unit["Service"]["BusName"] == BUS_NAME
    args = _daemon_args(unit["Service"]["ExecStart"])
    assert args.bus == "system"
    assert str(args.config_dir) == "/etc/example-storage"
    assert unit["Service"]["ConfigurationDirectory"] == "example-storage"
    assert str(args.run_dir) == "/run/" + unit["Service"]["RuntimeDirectory"]
    assert unit["Install"]["Alias"] == f"dbus-{BUS_NAME}.service"


def test_bus_policy():
    root = etree.parse(str(DBUS_DIR / "org.example.Storage.conf")).getroot()
    owners = root.xpath("//allow[@own]")
    assert [(o.getparent().get("user"), o.get("own")) for o in owners] == [("root", BUS_NAME)]
    default = root.xpath("//policy[@context='default']/allow/@send_destination")
    assert default == [BUS_NAME]
