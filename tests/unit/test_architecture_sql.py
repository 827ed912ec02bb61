"""One owner per table: only the module that creates a table has SQL naming it.

The owner of a table is the one module of the package with its ``CREATE TABLE``. Any other module whose
source has a SQL-looking string naming the table (or a SQL string with the table name left to a
placeholder, or a look into ``sqlite_master``/``PRAGMA table_info`` to guess what exists) fails here: it
must call the owner's methods instead.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dicomnode"
DATABASE = PACKAGE / "database.py"  # the migration machinery: rebuilds whichever table an owner names

SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|PRAGMA|REPLACE)\b")
CREATE_TABLE = re.compile(
    r"\bCREATE\s+(?:TEMP\s+|TEMPORARY\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)\s*\(", re.I)
DYNAMIC_TABLE = re.compile(r"\b(FROM|JOIN|INTO|UPDATE|TABLE)\s+$")
INTROSPECTION = re.compile(r"sqlite_master|sqlite_schema|table_info\s*\(", re.I)


def sql_strings(source: str) -> list[tuple[int, str, bool]]:
    """(line, text, followed by a placeholder) of every string constant and f-string part."""
    found: list[tuple[int, str, bool]] = []
    in_fstrings: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            parts = node.values
            for i, part in enumerate(parts):
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    in_fstrings.add(id(part))
                    dynamic = i + 1 < len(parts) and isinstance(parts[i + 1], ast.FormattedValue)
                    found.append((node.lineno, part.value, dynamic))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in in_fstrings:
            found.append((node.lineno, node.value, False))
    return sorted(found)


def owners(package: Path) -> dict[str, Path]:
    """table → the module that creates it (a table created in two modules is an error)."""
    tables: dict[str, Path] = {}
    for module in sorted(package.rglob("*.py")):
        for _, text, _ in sql_strings(module.read_text()):
            for table in CREATE_TABLE.findall(text):
                assert tables.setdefault(table, module) == module, (
                    f"Table {table} is created in {tables[table]} and in {module}; a table has one owner.")
    return tables


def violations(package: Path, tables: dict[str, Path]) -> list[str]:
    words = {table: re.compile(rf"\b{re.escape(table)}\b") for table in tables}
    found: list[str] = []
    for module in sorted(package.rglob("*.py")):
        if module == DATABASE:
            continue
        name = module.relative_to(package.parent)
        for line, text, dynamic in sql_strings(module.read_text()):
            if INTROSPECTION.search(text):
                found.append(f"{name}:{line} inspects the schema at run time ({text.strip()[:60]!r})")
            if not SQL.search(text):
                continue
            if dynamic and DYNAMIC_TABLE.search(text):
                found.append(f"{name}:{line} leaves a table name to a placeholder ({text.strip()[:60]!r})")
            for table, word in words.items():
                if tables[table] != module and word.search(text):
                    owner = tables[table].relative_to(package.parent)
                    found.append(f"{name}:{line} names table {table} in SQL; ask its owner {owner}")
    return found


def test_every_table_has_one_owner_and_no_other_module_names_it_in_sql() -> None:
    tables = owners(PACKAGE)
    for table in ("spool_instances", "assembly_series", "assembly_studies", "assembly_events",
                  "route_decisions", "jobs", "job_leases", "outbox", "audit"):
        assert table in tables, f"no module creates table {table}"
    assert violations(PACKAGE, tables) == []


def test_the_scan_finds_reaches_across(tmp_path: Path) -> None:
    """The scanner itself: a module reaching into another's table is reported, its owner is not."""
    package = tmp_path / "dicomnode"
    (package / "send").mkdir(parents=True)
    (package / "console").mkdir()
    (package / "send" / "outbox.py").write_text(
        'DDL = """CREATE TABLE IF NOT EXISTS outbox (id INTEGER);"""\n'
        'def depth(conn):\n    return conn.execute("SELECT COUNT(*) FROM outbox").fetchone()\n')
    (package / "console" / "page.py").write_text(
        "def rows(conn, marks):\n"
        '    a = conn.execute(f"SELECT state FROM outbox WHERE id IN ({marks})")\n'
        '    b = conn.execute("SELECT name FROM sqlite_master")\n'
        '    table = "outbox"\n'
        '    c = conn.execute(f"DELETE FROM {table} WHERE 1")\n'
        '    return a, b, c, "the outbox holds what is to be sent"\n')
    tables = owners(package)
    assert tables == {"outbox": package / "send" / "outbox.py"}
    found = violations(package, tables)
    assert [f.split(" ", 1)[0] for f in found] == [
        "dicomnode/console/page.py:2", "dicomnode/console/page.py:3", "dicomnode/console/page.py:5"]
    assert "names table outbox in SQL; ask its owner dicomnode/send/outbox.py" in found[0]
