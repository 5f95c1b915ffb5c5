"""The reply context bus.py gives dbus-next's method handlers (``_ReplyContext``)."""

from __future__ import annotations

import pytest
from example_storage.adapter import bus

pytestmark = pytest.mark.skipif(bus.LIBRARY != "dbus-next",
                                reason="dbus-fast's own reply context is used")


class Sent:
    def __init__(self) -> None:
        self.messages: list = []

    def send(self, msg) -> None:
        self.messages.append(msg)


def call(flags=bus.MessageFlag.NONE):
    return bus.Message(destination="org.example.Storage", path="/org/example/Storage",
                       interface="org.example.Storage.Manager", member="CreatePool",
                       sender=":1.5", serial=9, flags=flags)


def test_a_reply_is_sent_unless_none_is_expected():
    sent = Sent()
    msg = call()
    with bus._ReplyContext(sent, msg) as reply:
        reply(bus.Message.new_method_return(msg, "s", ["ok"]))
    assert [m.body for m in sent.messages] == [["ok"]]

    quiet = Sent()
    msg = call(bus.MessageFlag.NO_REPLY_EXPECTED)
    with bus._ReplyContext(quiet, msg) as reply:
        reply(bus.Message.new_method_return(msg, "s", ["ok"]))
    assert quiet.messages == []


def test_a_dbus_error_becomes_its_error_reply():
    sent = Sent()
    with bus._ReplyContext(sent, call()):
        raise bus.DBusError("org.example.Storage.Error.NotFound", "no such pool")
    (err,) = sent.messages
    assert (err.message_type, err.error_name, err.body, err.reply_serial) == (
        bus.MessageType.ERROR, "org.example.Storage.Error.NotFound", ["no such pool"], 9)


def test_any_other_error_is_a_failed_without_traceback(caplog):
    sent = Sent()
    with bus._ReplyContext(sent, call()):
        raise KeyError("secret detail")
    (err,) = sent.messages
    assert err.error_name == "org.example.Storage.Error.Failed"
    assert err.body == ["internal error: KeyError"]
    assert "Traceback" not in err.body[0] and "secret" not in err.body[0]
    assert "secret detail" in caplog.text      # logged for the administrator


def test_send_error_answers_like_the_context():
    sent = Sent()
    bus._ReplyContext(sent, call()).send_error(
        bus.DBusError("org.example.Storage.Error.Busy", "busy"))
    assert [m.error_name for m in sent.messages] == ["org.example.Storage.Error.Busy"]
