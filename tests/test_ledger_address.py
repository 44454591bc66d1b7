"""uploader.ledger.address: a ledger URL read as its user means it (a raw `@` in the password), printed without
any password (user info or `password=` query parameter)."""

from __future__ import annotations

import pytest

from uploader.ledger import parse_url, shown_ledger

PASSWORDS = ["Sw0rd@fish9", "a@b/c", "p?q#r", "x:y@z", "plain", "%40 encoded"]


@pytest.mark.parametrize("password", PASSWORDS)
def test_the_password_runs_to_the_last_at_sign(password: str) -> None:
    url = parse_url(f"postgresql+psycopg://bob:{password}@db.example.com:5433/uploads?sslmode=require")
    expected = "@ encoded" if password == "%40 encoded" else password  # percent-encoding still works
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "bob",
        expected,
        "db.example.com",
        5433,
        "uploads",
    )
    assert dict(url.query) == {"sslmode": "require"}


@pytest.mark.parametrize("password", PASSWORDS)
def test_no_piece_of_a_password_is_shown(password: str) -> None:
    shown = shown_ledger(f"postgresql+psycopg://bob:{password}@db.example.com/uploads")
    assert shown == "postgresql+psycopg://bob:PASSWORD@db.example.com/uploads"


@pytest.mark.parametrize("key", ["password", "PASSWORD", "sslpassword"])
def test_a_password_query_parameter_is_shown_hidden(key: str) -> None:
    shown = shown_ledger(f"postgresql+psycopg://bob@db.example.com/uploads?sslmode=require&{key}=s3cr3t")
    assert "s3cr3t" not in shown
    assert "sslmode=require" in shown and f"{key}=PASSWORD" in shown


def test_a_url_without_a_password_is_shown_as_given() -> None:
    for url in ("sqlite:////tmp/run (1)/jobs.db", "postgresql+psycopg://bob@db.example.com/uploads?sslmode=require"):
        assert shown_ledger(url) == url


def test_a_url_that_does_not_parse_shows_nothing_of_itself() -> None:
    assert shown_ledger("postgresql+psycopg://bob:s3cr3t@db:notaport/x") == "postgresql+psycopg://PASSWORD"


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("postgresql+psycopg://bob:s3cr3t@db:notaport/x", "its port is not a number"),
        ("nosuch://bob:s3cr3t@db/x", "Can't load plugin"),
    ],
)
def test_a_ledger_url_that_cannot_be_used_is_one_error_without_its_password(url: str, said: str) -> None:
    from uploader.errors import LedgerError
    from uploader.ledger import Ledger

    with pytest.raises(LedgerError) as caught:
        Ledger.open(url)
    assert said in str(caught.value) and "s3cr3t" not in str(caught.value)
