"""OPTIMADE filters to SQL: the ``optimade`` package's grammar (v1.2, Lark) parses the filter; :class:`SqlFilter`, a
``BaseTransformer`` of the same package, turns the tree into one SQLAlchemy boolean expression over the candidate
table (see ``properties.py``), so filtering, counting and paging happen in the database.

Unknown values follow SQL: a comparison with a null property is null, which ``WHERE`` treats as false, and ``NOT`` of
it stays null; a property of another provider (``_other_x``) is such a null. The package's Mongo and Elasticsearch
transformers do not fit a SQL database; this one is ours.

Bounds (each refusal names the limit): a filter of at most :data:`MAX_FILTER_LENGTH` characters, parentheses nested
at most :data:`MAX_NESTING` deep, at most :data:`MAX_COMPARISONS` comparisons and :data:`MAX_LIST_VALUES` values in a
``HAS ALL/ANY/ONLY`` list, integers within ±2⁶³ and finite numbers, no NUL characters.
"""

from __future__ import annotations

import functools
import json
import math
import operator
import re
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from lark import Token, Tree, v_args
from lark.exceptions import UnexpectedInput, VisitError
from optimade.exceptions import BadRequest, NotImplementedResponse
from optimade.filtertransformers import BaseTransformer
from optimade.models import DataType
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from workflows.web.optimade.properties import PREFIX, PROPERTIES, Backing, Property, S, formula_fields

MAX_FILTER_LENGTH = 2000
MAX_NESTING = 20
MAX_COMPARISONS = 100
MAX_LIST_VALUES = 100
INT_LIMIT = 2**63

OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}
REVERSED = {"=": "=", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
UNKNOWN_VALUE = sa.cast(sa.null(), sa.Boolean)  # the truth value of a comparison with an unknown property


class Position(FunctionElement):
    """1-based position of a substring, 0 when absent, case-sensitive on both backends (SQLite's LIKE is not)."""

    type = sa.Integer()
    inherit_cache = True


@compiles(Position)
def _position(element, compiler, **kw):
    return f"instr({compiler.process(element.clauses, **kw)})"


@compiles(Position, "postgresql")
def _position_pg(element, compiler, **kw):
    return f"strpos({compiler.process(element.clauses, **kw)})"


def _contains(sql, text: str):
    return Position(sql, sa.literal(text, sa.Text)) > 0


_parsers = threading.local()


def _grammar():
    """The OPTIMADE v1.2 grammar's Lark parser, one per thread (requests are served from a thread pool)."""
    lark = getattr(_parsers, "lark", None)
    if lark is None:
        from optimade.filterparser import LarkParser

        lark = _parsers.lark = LarkParser(version=(1, 2, 0)).lark
    return lark


@functools.lru_cache(maxsize=1)
def known_provider_prefixes() -> frozenset[str]:
    """Prefixes registered at providers.optimade.org, as shipped with the ``optimade`` package (no network)."""
    from pathlib import Path

    import optimade

    # read as a file: importing optimade.server.data needs bson (the package's Mongo test data)
    try:
        data = json.loads((Path(optimade.__file__).parent / "server" / "data" / "providers.json").read_text())
    except (OSError, ValueError):
        return frozenset()
    return frozenset(p["id"] for p in data.get("data", []) if isinstance(p, dict) and "id" in p)


class Unknown:
    """A property of another provider: unknown here, so every comparison with it is null."""

    def __init__(self, name: str):
        self.name = name


def check_text(text: str) -> None:
    """Length, characters and nesting of a filter, checked before the parser sees it."""
    if len(text) > MAX_FILTER_LENGTH:
        raise BadRequest(detail=f"filter: {len(text)} characters; the limit is {MAX_FILTER_LENGTH}")
    if "\x00" in text:
        raise BadRequest(detail="filter: contains a NUL character")
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")":
            depth -= 1
    if deepest > MAX_NESTING:
        raise BadRequest(detail=f"filter: parentheses nested {deepest} deep; the limit is {MAX_NESTING}")


_UPPERCASE_NAME = re.compile(r'(?<![\w"])(_?[a-z][a-z0-9]*_[A-Za-z0-9_]*[A-Z][A-Za-z0-9_]*)')


def parse(text: str) -> Tree:
    """The filter's parse tree, or a 400 that says where the syntax broke."""
    check_text(text)
    try:
        return _grammar().parse(text)
    except UnexpectedInput as err:
        where = f"character {err.column}" if getattr(err, "column", -1) > 0 else "the end"
        hint = ""
        outside_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', text)
        upper = _UPPERCASE_NAME.search(outside_strings)
        if upper:
            hint = (f"; OPTIMADE property names are lowercase: write {upper.group(1).lower()!r} for "
                    f"{upper.group(1)!r}")
        raise BadRequest(detail=f"filter: syntax error at {where}: {err.get_context(text, 30).strip()!r}{hint}") \
            from None
    except RecursionError:
        raise BadRequest(detail="filter: too deeply nested") from None


class SqlFilter(BaseTransformer):
    """Transforms a parsed filter into an SQLAlchemy boolean expression over ``properties.entry_source()``.

    ``formulas`` returns the distinct formulas in the candidate table; it is called (once) only when the filter
    names a formula-derived property. ``warnings`` collects what the response's ``meta.warnings`` should say.
    """

    def __init__(self, formulas: Callable[[], list[str]]):
        super().__init__()
        self._formulas = formulas
        self._formula_list: list[str] | None = None
        self.comparisons = 0
        self.warnings: list[str] = []

    # ------------------------------------------------------------------ entry point
    def translate(self, tree: Tree):
        try:
            return self.transform(tree)
        except VisitError as err:  # lark wraps what a rule raised
            raise err.orig_exc from None

    # ------------------------------------------------------------------ values
    def filter(self, arg):
        return arg[0] if arg else sa.true()

    @v_args(inline=True)
    def string(self, token):
        return re.sub(r"\\(.)", r"\1", str(token)[1:-1])

    @v_args(inline=True)
    def number(self, token):
        value = int(token) if token.type == "SIGNED_INT" else float(token)
        if isinstance(value, int) and abs(value) >= INT_LIMIT:
            raise BadRequest(detail=f"filter: the integer {str(token)[:30]} is outside ±2^63")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadRequest(detail=f"filter: the number {str(token)[:30]} is not finite (double precision)")
        return value

    @v_args(inline=True)
    def signed_int(self, token):
        return self.number(Token("SIGNED_INT", str(token)))

    def bool(self, arg):
        raise BadRequest(detail="filter: no property of structures is a boolean; TRUE and FALSE compare with nothing")

    @v_args(inline=True)
    def not_implemented_string(self, value):
        return value

    def property(self, args):
        if len(args) > 1:
            raise NotImplementedResponse(detail=f"filter: nested property names ({'.'.join(map(str, args))}) are not "
                                                "supported; no structures property here is a dictionary")
        name = str(args[0])
        if name in PROPERTIES:
            return PROPERTIES[name]
        if name.startswith("_") and not name.startswith(f"_{PREFIX}_"):
            prefix = name[1:].split("_", 1)[0]
            if prefix not in known_provider_prefixes():
                self.warnings.append(f"{name!r} has a prefix this server does not know: it was treated as unknown")
            return Unknown(name)
        raise BadRequest(detail=f"filter: {name!r} is not a known or searchable property of structures "
                                "(/info/structures lists them)")

    def value_list(self, arg):
        if any(isinstance(a, Token) and a.type == "OPERATOR" for a in arg):
            raise NotImplementedResponse(detail="filter: operators inside a HAS ALL/ANY/ONLY list are not supported")
        if len(arg) > MAX_LIST_VALUES:
            raise BadRequest(detail=f"filter: a list of {len(arg)} values; the limit is {MAX_LIST_VALUES}")
        return list(arg)

    def value_zip(self, arg):
        raise NotImplementedResponse(detail="filter: correlated HAS queries (a:b HAS x:y) are not supported")

    value_zip_list = property_zip_addon = set_zip_op_rhs = value_zip

    # ------------------------------------------------------------------ boolean structure
    def expression(self, arg):
        return sa.or_(*arg) if len(arg) > 1 else arg[0]

    def expression_clause(self, arg):
        return sa.and_(*arg) if len(arg) > 1 else arg[0]

    def expression_phrase(self, arg):
        return sa.not_(arg[1]) if len(arg) == 2 else arg[0]

    # ------------------------------------------------------------------ right-hand sides (as tuples)
    @v_args(inline=True)
    def value_op_rhs(self, op, value):
        return ("op", str(op), value)

    def known_op_rhs(self, arg):
        return ("known", arg[1] == "KNOWN")

    def fuzzy_string_op_rhs(self, arg):
        return ("fuzzy", str(arg[0]), arg[-1])

    def set_op_rhs(self, arg):
        if len(arg) == 2:
            return ("has", "=", arg[1])
        keyword = arg[1]
        if isinstance(keyword, Token) and keyword.type in ("ALL", "ANY", "ONLY"):
            return (f"has_{keyword.type.lower()}", arg[2])
        return ("has", str(keyword), arg[2])  # HAS <operator> value

    def length_op_rhs(self, arg):
        return ("length", str(arg[1]) if len(arg) == 3 else "=", arg[-1])

    # ------------------------------------------------------------------ comparisons
    def constant_first_comparison(self, arg):
        constant, op, value = arg
        if isinstance(value, (Property, Unknown)):
            return self.property_first_comparison([value, ("op", REVERSED[str(op)], constant)])
        self._count()
        if type(constant) is not type(value) and not (_is_number(constant) and _is_number(value)):
            raise BadRequest(detail=f"filter: cannot compare {constant!r} with {value!r}")
        return sa.true() if OPS[str(op)](constant, value) else sa.false()

    def property_first_comparison(self, arg):
        prop, rhs = arg
        self._count()
        if isinstance(prop, Unknown):
            if rhs[0] == "known":
                return sa.false() if rhs[1] else sa.true()
            return UNKNOWN_VALUE
        value = rhs[-1]
        if isinstance(value, (Property, Unknown)) or (isinstance(value, list)
                                                       and any(isinstance(v, (Property, Unknown)) for v in value)):
            raise NotImplementedResponse(detail="filter: comparing a property with another property is not supported")
        if prop.backing is Backing.not_queryable:
            raise NotImplementedResponse(detail=f"filter: {prop.name} is served but not queryable here")
        self._check_operation(prop, rhs)
        if prop.backing is Backing.column:
            return self._column(prop, rhs)
        if prop.backing in (Backing.element_set, Backing.flag_list):
            return self._member_set(prop, rhs)
        if prop.backing is Backing.constant:
            return sa.true() if evaluate(prop.constant, prop, rhs) else sa.false()
        return self._formula(prop, rhs)

    def _count(self) -> None:
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise BadRequest(detail=f"filter: more than {MAX_COMPARISONS} comparisons; the limit is {MAX_COMPARISONS}")

    # ------------------------------------------------------------------ type checks
    def _check_operation(self, prop: Property, rhs: tuple) -> None:
        kind = rhs[0]
        is_list = prop.type is DataType.LIST
        if kind == "known":
            return
        if is_list and kind in ("op", "fuzzy"):
            raise BadRequest(detail=f"filter: {prop.name} is a list: use HAS, HAS ALL/ANY/ONLY or LENGTH")
        if not is_list and kind.startswith("has") or not is_list and kind == "length":
            raise BadRequest(detail=f"filter: {prop.name} is of type {prop.type.value}: HAS and LENGTH apply to lists")
        if kind == "fuzzy" and prop.type is not DataType.STRING:
            raise BadRequest(detail=f"filter: {rhs[1]} applies to strings; {prop.name} is of type {prop.type.value}")
        if kind == "length":
            if not isinstance(rhs[2], int):
                raise BadRequest(detail=f"filter: LENGTH takes an integer, got {rhs[2]!r}")
            return
        item_type = prop.item_type if is_list else prop.type
        values = rhs[-1] if isinstance(rhs[-1], list) else [rhs[-1]]
        for value in values:
            _check_value(prop, item_type, value)

    # ------------------------------------------------------------------ SQL
    def _column(self, prop: Property, rhs: tuple):
        sql = prop.sql
        kind = rhs[0]
        if kind == "known":
            return sql.is_not(None) if rhs[1] else sql.is_(None)
        if kind == "fuzzy":
            text = rhs[2]
            if rhs[1] == "CONTAINS":
                return sa.and_(sql.is_not(None), _contains(sql, text))
            n = len(text)
            if rhs[1] == "STARTS":
                return sa.func.substr(sql, 1, n) == text
            return sa.and_(sa.func.length(sql) >= n, sa.func.substr(sql, sa.func.length(sql) - n + 1) == text)
        op, value = rhs[1], rhs[2]
        if prop.type is DataType.TIMESTAMP:
            return _timestamp(sql, op, _timestamp_value(prop, value))
        return OPS[op](sql, value)

    def _member_set(self, prop: Property, rhs: tuple):
        kind = rhs[0]
        quote = '"' if prop.backing is Backing.flag_list else ","

        def has(member: str):
            if not member or quote in member or "\\" in member:
                return sa.false()  # no element symbol or flag is empty or holds the separator (",Li,S," is two)
            return _contains(prop.sql, f"{quote}{member}{quote}")

        if kind == "known":
            return prop.sql.is_not(None) if rhs[1] else prop.sql.is_(None)
        if kind == "length":
            return OPS[rhs[1]](prop.length_sql, rhs[2])
        if kind == "has":
            if rhs[1] != "=":
                raise NotImplementedResponse(detail=f"filter: HAS with an operator is not supported on {prop.name}")
            return has(rhs[2])
        members = list(dict.fromkeys(rhs[1]))
        if kind == "has_all":
            return sa.and_(*(has(m) for m in members))
        if kind == "has_any":
            return sa.or_(*(has(m) for m in members))
        # HAS ONLY: every member of the property is listed = as many listed members present as the property holds
        present = sum((sa.case((has(m), 1), else_=0) for m in members), sa.literal(0))
        return present == prop.set_size_sql

    def _formula(self, prop: Property, rhs: tuple):
        if self._formula_list is None:
            self._formula_list = sorted(set(self._formulas()))
        matches, rest = [], []
        for formula in self._formula_list:
            try:
                derived = prop.of_formula(formula_fields(formula))
            except ValueError:
                derived = None  # a formula the composition code cannot read: the property is unknown there
            (matches if evaluate(derived, prop, rhs) else rest).append(formula)
        if not matches:
            return sa.false()
        if not rest:
            return S.formula.is_not(None)
        # the shorter list, rendered inline: no bound-parameter limit however many formulas the table holds
        if len(matches) <= len(rest):
            return S.formula.in_(sa.bindparam(None, matches, type_=sa.Text, expanding=True, literal_execute=True))
        return S.formula.not_in(sa.bindparam(None, rest, type_=sa.Text, expanding=True, literal_execute=True))


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_value(prop: Property, item_type: DataType | None, value) -> None:
    if item_type in (DataType.STRING, DataType.TIMESTAMP):
        if not isinstance(value, str):
            raise BadRequest(detail=f"filter: {prop.name} holds strings; compare it with a quoted string, "
                                    f"not {value!r}")
    elif item_type in (DataType.INTEGER, DataType.FLOAT):
        if not _is_number(value):
            raise BadRequest(detail=f"filter: {prop.name} holds numbers; compare it with a number, not {value!r}")


def _timestamp_value(prop: Property, text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(detail=f"filter: {prop.name} takes an RFC 3339 timestamp such as "
                                f"\"2024-05-01T12:00:00Z\", not {text[:40]!r}") from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _timestamp(sql, op: str, value: datetime):
    """Compare the timestamp as served (whole seconds): the stored value may carry microseconds."""
    floor = value.replace(microsecond=0)
    ceil = floor if value == floor else floor + timedelta(seconds=1)
    following = floor + timedelta(seconds=1)
    if op == "=":
        return sa.and_(sql >= floor, sql < following) if value == floor else sa.false()
    if op == "!=":
        return sa.or_(sql < floor, sql >= following) if value == floor else sql.is_not(None)
    if op == ">=":
        return sql >= ceil
    if op == ">":
        return sql >= following
    if op == "<":
        return sql < ceil
    return sql < following  # <=


def evaluate(value, prop: Property, rhs: tuple) -> bool:
    """A comparison on a value known in Python (a constant or a formula-derived property); unknown → False."""
    kind = rhs[0]
    if kind == "known":
        return (value is not None) == rhs[1]
    if value is None:
        return False
    if kind == "op":
        return bool(OPS[rhs[1]](value, rhs[2]))
    if kind == "fuzzy":
        text = rhs[2]
        return {"CONTAINS": text in value, "STARTS": value.startswith(text), "ENDS": value.endswith(text)}[rhs[1]]
    if kind == "length":
        return bool(OPS[rhs[1]](len(value), rhs[2]))
    if kind == "has":
        return any(OPS[rhs[1]](item, rhs[2]) for item in value)
    members = rhs[1]
    if kind == "has_all":
        return all(m in value for m in members)
    if kind == "has_any":
        return any(m in value for m in members)
    return all(item in members for item in value)  # has_only


def where_clause(text: str | None, formulas: Callable[[], list[str]]) -> tuple[Any, list[str]]:
    """(SQL boolean expression, warnings) for an OPTIMADE filter; no filter matches everything."""
    if text is None or not text.strip():
        return sa.true(), []
    transformer = SqlFilter(formulas)
    clause = transformer.translate(parse(text))
    return clause, transformer.warnings


__all__ = ["MAX_COMPARISONS", "MAX_FILTER_LENGTH", "MAX_LIST_VALUES", "MAX_NESTING", "SqlFilter", "evaluate",
           "known_provider_prefixes", "parse", "where_clause"]
