"""The test kit itself: polling, ports and the fake engine keep the promises the other tests rely on."""

from __future__ import annotations

import inspect
import socket
import threading
import time

import pytest

from heygem.engine.api import Engine
from tests.kit import FakePipeline, Pipelines, free_ports, wait_until


def test_wait_until_returns_the_first_truthy_value():
    values = iter([0, None, "", "ready", "later"])
    assert wait_until(lambda: next(values), 5, interval=0.01) == "ready"


def test_wait_until_names_what_it_waited_for_after_the_timeout():
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0.2 s waiting for the moon: still new"):
        wait_until(lambda: False, 0.2, interval=0.01, message=lambda: "the moon: still new")
    assert 0.2 <= time.monotonic() - started < 2


def test_free_ports_are_distinct_and_bindable():
    ports = free_ports(4)
    assert len(set(ports)) == 4
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_the_fake_engine_has_the_engine_protocol_signatures(settings):
    fake = FakePipeline(settings)
    for name in ("load", "status", "warmup", "run"):
        expected = inspect.signature(getattr(Engine, name))
        assert inspect.signature(getattr(FakePipeline, name)).parameters.keys() == expected.parameters.keys()
    assert fake.status().loaded is False
    fake.load()
    assert fake.status().loaded is True


def test_a_gated_fake_loads_only_once_the_gate_opens(settings):
    gate = threading.Event()
    factory = Pipelines(gate=gate)
    fake = factory(settings)
    loader = threading.Thread(target=fake.load)
    loader.start()
    try:
        loader.join(0.2)
        assert loader.is_alive() and not fake.loaded
        factory.open_gate()
        loader.join(5)
        assert fake.loaded and factory.built == [fake]
    finally:
        gate.set()
        loader.join(5)


def test_a_file_gate_holds_load_in_a_server_process(settings, tmp_path, monkeypatch):
    gate = tmp_path / "loaded"
    monkeypatch.setenv("HEYGEM_FAKE_LOAD_GATE", str(gate))
    fake = FakePipeline(settings)
    loader = threading.Thread(target=fake.load)
    loader.start()
    try:
        loader.join(0.3)
        assert loader.is_alive() and not fake.loaded
        gate.touch()
        loader.join(5)
        assert fake.loaded
    finally:
        gate.touch()
        loader.join(5)
