"""fleet_app.client_address: the address throttles and lockouts key on."""

import pytest
from django.test import RequestFactory

from fleet_app.client_address import client_address, client_ip


def request(remote="203.0.113.5", forwarded=None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


def test_without_trusted_proxies_it_ignores_x_forwarded_for(settings):
    settings.TRUSTED_PROXY_COUNT = 0

    assert client_address(request(forwarded="198.51.100.1")) == "203.0.113.5"


def test_behind_one_proxy_it_takes_the_address_the_proxy_saw(settings):
    settings.TRUSTED_PROXY_COUNT = 1

    # The client wrote the first entry itself; the proxy appended the real one.
    got = client_address(request("10.0.0.2", forwarded="192.0.2.66, 198.51.100.1"))

    assert got == "198.51.100.1"


def test_behind_two_proxies_it_takes_the_second_from_the_right(settings):
    settings.TRUSTED_PROXY_COUNT = 2

    got = client_address(request("10.0.0.2", forwarded="192.0.2.66, 198.51.100.1, 10.0.0.1"))

    assert got == "198.51.100.1"


@pytest.mark.parametrize("forwarded", [None, "", "198.51.100.1"])
def test_with_fewer_entries_than_proxies_it_falls_back_to_the_peer(settings, forwarded):
    settings.TRUSTED_PROXY_COUNT = 2

    assert client_address(request("10.0.0.2", forwarded=forwarded)) == "10.0.0.2"


@pytest.mark.parametrize("entry", ["not-an-ip", "198.51.100.1:443", "unknown", " "])
def test_an_invalid_entry_is_ignored(settings, entry):
    settings.TRUSTED_PROXY_COUNT = 1

    assert client_address(request("10.0.0.2", forwarded=f"192.0.2.66, {entry}")) == "10.0.0.2"


def test_addresses_are_canonical(settings):
    settings.TRUSTED_PROXY_COUNT = 1

    assert client_address(request(forwarded="2001:DB8:0:0::1")) == "2001:db8::1"
    assert client_address(request(forwarded="::ffff:198.51.100.1")) == "198.51.100.1"


def test_an_unusable_peer_is_unknown(settings):
    settings.TRUSTED_PROXY_COUNT = 0

    assert client_address(request(remote="")) == "unknown"


def test_client_ip_is_none_when_unknown(settings):
    settings.TRUSTED_PROXY_COUNT = 0

    assert client_ip(request(remote="")) is None
    assert client_ip(request()) == "203.0.113.5"
