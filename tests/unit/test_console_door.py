"""The console's door, over real HTTP against a running :class:`ConsoleServer` on a free loopback port:
login throttling per user name and per client address (clients bind 127.0.0.x source addresses),
server-side sessions (a copied cookie stops working after logout and after a password change), and the
Origin check on state-changing requests."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from dicomnode.config import Config
from dicomnode.console.app import create_app
from dicomnode.console.auth import Credentials, hash_password
from dicomnode.console.node import ConsoleNode
from dicomnode.console.server import ConsoleServer
from dicomnode.observability.metrics import Metrics
from tests.support import free_port

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a much longer new passphrase"


def make_node(root: Path, health: dict[str, object] | None = None, **console: object) -> ConsoleNode:
    (root / "rules").mkdir(parents=True, exist_ok=True)
    config = Config.model_validate({
        "storage": {"path": str(root / "data")},
        "rules": {"path": str(root / "rules"), "watch": False},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}},
        "console": {"enabled": True, "admin_password_hash": hash_password(PASSWORD, n=2**10),
                    "secret_key": "test-secret", "login_max_failures": 3, **console},
        "health": health or {},
    })
    return ConsoleNode.for_config(config, metrics=Metrics())


@pytest.fixture
def node(tmp_path: Path) -> ConsoleNode:
    return make_node(tmp_path / "node")


@pytest.fixture
def server(node: ConsoleNode) -> Iterator[ConsoleServer]:
    server = ConsoleServer(node, "127.0.0.1", free_port())
    server.start()
    yield server
    server.stop()


def browser(server: ConsoleServer, address: str = "127.0.0.1", **kwargs: object) -> httpx.Client:
    """A client from loopback source ``address`` that sends the console's own Origin, like a browser."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=server.url, transport=transport, headers={"Origin": server.url},
                        timeout=20, follow_redirects=True, **kwargs)


def csrf(client: httpx.Client, page: str = "/login") -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get(page).text)
    assert match, f"{page} has no CSRF field"
    return match.group(1)


def login(client: httpx.Client, user: str = "admin", password: str = PASSWORD) -> httpx.Response:
    return client.post("/login", data={"username": user, "password": password, "csrf_token": csrf(client),
                                       "next": "/"})


def text(response: httpx.Response) -> str:
    return html.unescape(response.text)


def text_of(fragment: str) -> str:
    return html.unescape(fragment)


def logged_in(client: httpx.Client) -> bool:
    return 'id="user-name">admin<' in client.get("/").text


def security_events(node: ConsoleNode) -> list[dict[str, object]]:
    return [e["detail"] for e in node.audit.events() if e["stage"] == "security"]


# -- throttling ---------------------------------------------------------------------------------------------
def test_failed_logins_lock_the_user_name_from_every_address(
    node: ConsoleNode, server: ConsoleServer
) -> None:
    attacker = browser(server, "127.0.0.2")
    answers = [login(attacker, password=f"guess {i}").status_code for i in range(3)]
    assert answers == [401, 401, 429]  # the third failure starts the lockout and says so
    admin = browser(server, "127.0.0.3")  # elsewhere, with the right password
    refused = login(admin)
    assert refused.status_code == 429
    assert "Too many failed logins for user 'admin'" in text(refused)
    assert 1 <= int(refused.headers["Retry-After"]) <= 15 * 60
    assert not logged_in(admin)
    assert [(e["event"], e["kind"], e["key"]) for e in security_events(node)] == [
        ("login_lockout", "user", "admin"), ("login_lockout", "address", "127.0.0.2")]
    metrics = node.metrics
    assert metrics.value("dicomnode_console_login_lockouts_total", {"kind": "user"}) == 1
    assert metrics.value("dicomnode_console_login_lockouts_total", {"kind": "address"}) == 1
    assert metrics.value("dicomnode_console_login_failures_total") == 3
    assert metrics.value("dicomnode_console_login_refused_total") == 1
    assert "dicomnode_console_login_lockouts_total" in metrics.render().decode()


def test_failed_logins_lock_the_address_for_every_user_name(node: ConsoleNode, server: ConsoleServer) -> None:
    scanner = browser(server, "127.0.0.4")
    assert [login(scanner, user=name, password="x").status_code for name in ("root", "guest", "admin")] == [
        401, 401, 429]
    refused = login(scanner)  # the right password, from the locked address
    assert refused.status_code == 429 and "Too many failed logins for address 127.0.0.4" in text(refused)
    assert not logged_in(scanner)
    other = browser(server, "127.0.0.5")  # each user name failed once only: admin may log in elsewhere
    assert login(other).status_code == 200 and logged_in(other)
    assert [(e["kind"], e["key"]) for e in security_events(node)] == [("address", "127.0.0.4")]


def test_a_login_elsewhere_does_not_reset_another_addresses_count(server: ConsoleServer) -> None:
    guesser = browser(server, "127.0.0.6")
    assert [login(guesser, password="x").status_code for _ in range(2)] == [401, 401]
    assert login(browser(server, "127.0.0.7")).status_code == 200  # clears user admin and 127.0.0.7 only
    third = login(guesser, user="root", password="x")
    assert third.status_code == 429 and "address 127.0.0.6" in text(third)
    assert login(guesser).status_code == 429


def test_parallel_guesses_cannot_outrun_the_count(node: ConsoleNode, server: ConsoleServer) -> None:
    from concurrent.futures import ThreadPoolExecutor

    clients = [browser(server, "127.0.0.13") for _ in range(12)]
    tokens = [csrf(c) for c in clients]

    def guess(i: int) -> int:
        return clients[i].post("/login", data={"username": "admin", "password": f"guess {i}",
                                               "csrf_token": tokens[i]}).status_code

    with ThreadPoolExecutor(12) as pool:
        answers = sorted(pool.map(guess, range(12)))
    assert answers.count(401) == 2 and answers.count(429) == 10, answers
    assert node.metrics.value("dicomnode_console_login_failures_total") == 3  # only 3 passwords were tried
    assert node.metrics.value("dicomnode_console_login_refused_total") == 9


def test_a_lockout_ends_after_its_time(tmp_path: Path) -> None:
    node = make_node(tmp_path / "node", login_lockout_minutes=0.04)  # 2.4 s
    server = ConsoleServer(node, "127.0.0.1", free_port())
    server.start()
    try:
        client = browser(server, "127.0.0.8")
        assert [login(client, password="x").status_code for _ in range(3)] == [401, 401, 429]
        refused = login(client)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) <= 3
        time.sleep(int(refused.headers["Retry-After"]) + 0.2)
        assert login(client).status_code == 200 and logged_in(client)
    finally:
        server.stop()


# -- sessions -----------------------------------------------------------------------------------------------
def _copy(server: ConsoleServer, client: httpx.Client, address: str = "127.0.0.9") -> httpx.Client:
    return browser(server, address, cookies={"dicomnode_session": client.cookies["dicomnode_session"]})


def test_a_copied_cookie_stops_working_after_logout(node: ConsoleNode, server: ConsoleServer) -> None:
    owner = browser(server)
    assert login(owner).status_code == 200
    cookie = owner.cookies["dicomnode_session"]
    thief = _copy(server, owner)
    assert logged_in(thief)  # a copy works while the session is active ...
    token = csrf(thief, "/")  # (the copied session's own CSRF token)
    assert owner.post("/logout", data={"csrf_token": csrf(owner, "/")}).status_code == 200
    assert not logged_in(owner)
    replay = browser(server, "127.0.0.9", cookies={"dicomnode_session": cookie})
    assert not logged_in(replay)  # ... and not after the logout, although its signature is still valid
    before = node.outbox.counts()
    replay = browser(server, "127.0.0.9", cookies={"dicomnode_session": cookie})
    action = replay.post("/queue/retry-failed", data={"csrf_token": token}, follow_redirects=False)
    assert action.status_code == 303 and action.headers["location"].startswith("/login")
    assert node.outbox.counts() == before


def test_a_password_change_ends_every_other_session(node: ConsoleNode, server: ConsoleServer) -> None:
    owner, other = browser(server), browser(server, "127.0.0.10")
    assert login(owner).status_code == 200 and login(other).status_code == 200
    copied = _copy(server, owner)
    assert logged_in(copied) and logged_in(other)
    assert '<span id="sessions">2</span>' in owner.get("/account").text
    short = owner.post("/account/password", data={"csrf_token": csrf(owner, "/account"), "current": PASSWORD,
                                                  "new": "short", "repeat": "short"})
    assert short.status_code == 400 and "needs at least 10" in text(short)
    wrong = owner.post("/account/password", data={"csrf_token": csrf(owner, "/account"), "current": "nope",
                                                  "new": NEW_PASSWORD, "repeat": NEW_PASSWORD})
    assert wrong.status_code == 400 and "current password is wrong" in text(wrong)
    changed = owner.post("/account/password", data={
        "csrf_token": csrf(owner, "/account"), "current": PASSWORD, "new": NEW_PASSWORD,
        "repeat": NEW_PASSWORD})
    assert changed.status_code == 200 and "1 other session(s) of admin were logged out" in text(changed)
    assert logged_in(owner)  # the session that changed it goes on (with a new cookie) ...
    assert not logged_in(copied) and not logged_in(other)  # ... its old cookie and the other login do not
    assert login(browser(server, "127.0.0.11")).status_code == 401  # the old password is gone
    assert login(browser(server, "127.0.0.12"), password=NEW_PASSWORD).status_code == 200
    events = [e for e in security_events(node) if e["event"] == "password_changed"]
    assert events == [{"event": "password_changed", "user": "admin", "client": "127.0.0.1",
                       "sessions_revoked": 1}]


def test_editing_the_configured_hash_overrides_a_password_changed_in_the_console(tmp_path: Path) -> None:
    node = make_node(tmp_path / "node")
    credentials = Credentials(node.database)
    configured = node.config.console.admin_password_hash
    changed = hash_password(NEW_PASSWORD, n=2**10)
    credentials.change("admin", configured, changed)
    assert credentials.password_hash("admin", configured) == changed
    reset = hash_password("reset by the operator", n=2**10)
    assert credentials.password_hash("admin", reset) == reset  # the config was edited: it wins


# -- origin -------------------------------------------------------------------------------------------------
def test_cross_origin_posts_are_refused_and_same_origin_ones_run(
    node: ConsoleNode, server: ConsoleServer
) -> None:
    client = browser(server)
    assert login(client).status_code == 200
    token = csrf(client, "/queue")
    dead = node.outbox.counts()
    def post(headers: dict[str, str]) -> httpx.Response:  # only these headers, the logged-in cookie
        return httpx.post(server.url + "/queue/retry-failed", data={"csrf_token": token}, headers=headers,
                          cookies=client.cookies, follow_redirects=False)

    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Referer": "http://evil.example/page"},
                    {"Origin": f"http://127.0.0.1:{server.port + 1}", "Referer": server.url + "/queue"}):
        refused = post(headers)
        assert refused.status_code == 403, headers
        assert "came from another site" in text(refused) and "nothing was changed" in text(refused)
    assert node.outbox.counts() == dead
    cross_login = httpx.post(server.url + "/login", headers={"Origin": "http://evil.example"},
                             data={"username": "admin", "password": PASSWORD})
    assert cross_login.status_code == 403  # no login CSRF either
    assert post({"Origin": server.url}).status_code == 303  # same origin
    assert post({"Referer": server.url + "/queue"}).status_code == 303
    assert post({}).status_code == 303  # no Origin, no Referer: not a browser page (token and cookie needed)
    assert post({"Origin": server.url.replace("http:", "https:")}).status_code == 303  # a TLS proxy in front
    assert client.get("/queue").status_code == 200  # reads are never refused


def test_allowed_origins_admit_a_proxy_name(tmp_path: Path) -> None:
    node = make_node(tmp_path / "node", allowed_origins=["https://console.example.org"])
    server = ConsoleServer(node, "127.0.0.1", free_port())
    server.start()
    try:
        client = browser(server)
        client.headers["Origin"] = "https://console.example.org"
        assert login(client).status_code == 200 and logged_in(client)
        client.headers["Origin"] = "https://other.example.org"
        assert client.post("/logout", data={"csrf_token": csrf(client, "/")}).status_code == 403
    finally:
        server.stop()


# -- the dashboard names unreachable destinations -----------------------------------------------------------
def test_the_dashboard_names_an_unreachable_destination(tmp_path: Path) -> None:
    from tests.unit.test_outbox import write_instance

    node = make_node(tmp_path / "node", health={"destination_unreachable_minutes": 0.001})
    client = TestClient(create_app(node))
    assert "UNREACHABLE" not in client.get("/").text
    node.outbox.enqueue("pacs", [write_instance(tmp_path / "a.dcm")], "forward")
    item = node.outbox.claim_due("pacs")[0]
    node.outbox.mark_failed(item.id, "Cannot connect to PACS at 127.0.0.1:4242: connection refused")
    time.sleep(0.1)  # past the 60 ms threshold
    lines = re.findall(r'<p class="bad-text unreachable">([^<]+)</p>', client.get("/").text)
    assert len(lines) == 1 and text_of(lines[0]).startswith("pacs: UNREACHABLE for 0 s")
    assert "connection refused" in lines[0]
