"""One SQLite file per run: every candidate, fit, score and LLM call, committed as it is produced.

WAL mode with one writer (the campaign process, which holds the run directory's lock). Candidates
are keyed by (generation, island, slot), so a resumed run that proposes the same slot again finds
the stored result instead of counting it twice. LLM calls are a ledger: a row is written when a
request is sent, charged at its worst case, and settled when the reply comes, so a run killed at any
moment has charged every request it may have paid for. A storage failure (read-only folder, damaged
file, full disk) becomes a StorageError: one line that says what to do.
"""
from __future__ import annotations

import errno
import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from discovery.search.proposers.base import LLMCall

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS candidates (
    id INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL, island INTEGER NOT NULL, slot INTEGER NOT NULL,
    proposer TEXT NOT NULL, operation TEXT, formula TEXT NOT NULL,
    canonical TEXT, canonical_hash TEXT, parents TEXT NOT NULL DEFAULT '[]',
    constant_specs TEXT, rationale TEXT,
    status TEXT NOT NULL,            -- evaluated | rejected | duplicate | failed
    reason TEXT,                     -- why rejected / failed; for duplicates, the original id
    complexity INTEGER, n_constants INTEGER,
    created_at REAL NOT NULL,
    UNIQUE (generation, island, slot)
);
CREATE INDEX IF NOT EXISTS candidates_hash ON candidates (canonical_hash);
CREATE TABLE IF NOT EXISTS fits (
    candidate_id INTEGER PRIMARY KEY REFERENCES candidates(id),
    constants TEXT NOT NULL,         -- {"group/target_index": {"name": value}}
    status TEXT NOT NULL, reason TEXT,
    val_r2 REAL, val_nmse REAL, val_nmae REAL,
    fit_seconds REAL,
    recipe TEXT,                     -- the fitting recipe validation chose (see fit.RECIPES)
    shape TEXT,                      -- the shape prior the fitted law breaks, NULL if none (discovery.laws.shape)
    fold_nmse TEXT                   -- NMSE on each further forward fold (JSON list), when selection uses folds
);
CREATE TABLE IF NOT EXISTS llm_calls (
    id INTEGER PRIMARY KEY,
    generation INTEGER, island INTEGER,
    request_hash TEXT, model TEXT,
    prompt_tokens INTEGER, completion_tokens INTEGER,
    latency_s REAL, cost_usd REAL, cached INTEGER, status TEXT,
    error TEXT, attempts TEXT, finish_reason TEXT, response_format TEXT,
    created_at REAL NOT NULL,
    charged_tokens INTEGER, charged_usd REAL,  -- what the budgets count: the worst case while sent, then settled
    earlier_tokens INTEGER NOT NULL DEFAULT 0, earlier_usd REAL NOT NULL DEFAULT 0,  -- earlier sends of it
    sends INTEGER NOT NULL DEFAULT 0,          -- HTTP sends of this request in this run (0: a cache hit)
    UNIQUE (generation, island, request_hash)
);
CREATE TABLE IF NOT EXISTS generations (
    generation INTEGER PRIMARY KEY,
    islands TEXT NOT NULL,           -- [[candidate ids], ...] after selection
    best_id INTEGER, best_val_r2 REAL,
    completed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS final (
    candidate_id INTEGER PRIMARY KEY,
    role TEXT NOT NULL,              -- pareto | best | human
    constants TEXT NOT NULL,
    train_fit_status TEXT,
    test_r2 REAL, test_nmse REAL, test_nmae REAL
);
CREATE TABLE IF NOT EXISTS events (ts REAL NOT NULL, kind TEXT NOT NULL, message TEXT NOT NULL);
"""


# Columns added since the first stores were written (ALTERed into an older store when it is opened).
ADDED_COLUMNS = {
    "fits": [("shape", "TEXT"), ("fold_nmse", "TEXT")],  # shape priors; forward folds
    "llm_calls": [("charged_tokens", "INTEGER"), ("charged_usd", "REAL"),
                  ("earlier_tokens", "INTEGER NOT NULL DEFAULT 0"), ("earlier_usd", "REAL NOT NULL DEFAULT 0"),
                  ("sends", "INTEGER NOT NULL DEFAULT 0")],
}


class StorageError(ValueError):
    """The run's storage failed (read-only folder, damaged file, full disk); the message says what to do."""


def storage_error(exc: BaseException, path: Path) -> StorageError:
    """One line for a failed read or write of `path` (campaign.sqlite, best.json): what broke and what to do."""
    path = Path(path)
    text = " ".join(str(exc).split()) or type(exc).__name__
    low = text.lower()
    code = getattr(exc, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or "disk is full" in low or "disk i/o error" in low:
        return StorageError(f"{path}: the disk is full or failing ({text}); free some space, then continue the run "
                            f"with: kepler discover --resume {path.parent}")
    if "not a database" in low or "malformed" in low or "encrypted" in low or "no such table" in low:
        return StorageError(f"{path} is damaged ({text}); move it away to start this run afresh, or restore it "
                            "from a backup")
    if (code in (errno.EACCES, errno.EPERM, errno.EROFS) or "readonly" in low or "read-only" in low
            or "unable to open" in low):
        return StorageError(f"cannot write to {path.parent} ({text}); make the folder writable, or choose another "
                            "folder with --out")
    return StorageError(f"{path}: {type(exc).__name__}: {text}")


class Store:
    def __init__(self, path: Path, readonly: bool = False):
        """Open (or create) a run's store; `readonly` opens an existing one without writing (and creates nothing)."""
        self.path = Path(path)
        try:
            if readonly:
                self.db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30,
                                          isolation_level=None, check_same_thread=False)
                self.db.row_factory = sqlite3.Row
                self.db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # a damaged file fails here
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread=False: an LLM proposer may write its ledger from a helper thread while the
            # campaign's thread waits for it (never both at once)
            self.db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(SCHEMA)
            for table, columns in ADDED_COLUMNS.items():
                have = {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}
                for name, kind in columns:
                    if name not in have:  # a run stored by an older Kepler
                        self.db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
        except (sqlite3.Error, OSError) as exc:
            raise storage_error(exc, self.path) from None

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")  # a full disk can fail the commit itself: then nothing of it is kept
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    # --- meta -----------------------------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        with self.transaction() as db:
            for k, v in values.items():
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, json.dumps(v)))

    def meta(self) -> dict[str, Any]:
        return {r["key"]: json.loads(r["value"]) for r in self.db.execute("SELECT key, value FROM meta")}

    def event(self, kind: str, message: str) -> None:
        self.db.execute("INSERT INTO events VALUES (?, ?, ?)", (time.time(), kind, message))

    # --- candidates ----------------------------------------------------------------------
    def slot(self, generation: int, island: int, slot: int) -> sqlite3.Row | None:
        return self.db.execute(
            "SELECT c.*, f.val_r2, f.val_nmse, f.val_nmae, f.constants AS fitted, f.status AS fit_status, f.shape, "
            "f.fold_nmse "
            "FROM candidates c LEFT JOIN fits f ON f.candidate_id = c.id "
            "WHERE generation = ? AND island = ? AND slot = ?", (generation, island, slot)).fetchone()

    def add_candidate(self, *, generation: int, island: int, slot: int, proposer: str, formula: str,
                      status: str, operation: str = "", canonical: str | None = None, canonical_hash: str | None = None,
                      parents: tuple[int, ...] = (), constant_specs: dict | None = None, rationale: str = "",
                      reason: str | None = None, complexity: int | None = None, n_constants: int | None = None,
                      fit: dict | None = None) -> int:
        """Insert a candidate (and its fit, if any) in one transaction."""
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO candidates (generation, island, slot, proposer, operation, formula, canonical, "
                "canonical_hash, parents, constant_specs, rationale, status, reason, complexity, n_constants, "
                "created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (generation, island, slot, proposer, operation, formula, canonical, canonical_hash,
                 json.dumps(list(parents)), json.dumps(constant_specs) if constant_specs is not None else None,
                 rationale, status, reason, complexity, n_constants, time.time()))
            cid = int(cur.lastrowid)
            if fit is not None:
                folds = fit.get("fold_nmse")
                db.execute("INSERT INTO fits (candidate_id, constants, status, reason, val_r2, val_nmse, val_nmae, "
                           "fit_seconds, recipe, shape, fold_nmse) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                           (cid, json.dumps(fit["constants"]), fit["status"], fit.get("reason"), fit["val_r2"],
                            fit["val_nmse"], fit["val_nmae"], fit["fit_seconds"], fit.get("recipe", "linear"),
                            fit.get("shape"), json.dumps(folds) if folds is not None else None))
        return cid

    def evaluated_by_hash(self, canonical_hash: str) -> sqlite3.Row | None:
        return self.db.execute(
            "SELECT c.id, f.val_r2, f.val_nmse, f.val_nmae, f.constants AS fitted, f.status AS fit_status "
            "FROM candidates c JOIN fits f ON f.candidate_id = c.id "
            "WHERE c.canonical_hash = ? AND c.status IN ('evaluated', 'failed') ORDER BY c.id LIMIT 1",
            (canonical_hash,)).fetchone()

    def candidate(self, cid: int) -> sqlite3.Row:
        return self.db.execute(
            "SELECT c.*, f.val_r2, f.val_nmse, f.val_nmae, f.constants AS fitted, f.status AS fit_status, f.recipe, "
            "f.shape, f.fold_nmse "
            "FROM candidates c LEFT JOIN fits f ON f.candidate_id = c.id WHERE c.id = ?", (cid,)).fetchone()

    def candidates(self, status: str | None = None) -> list[sqlite3.Row]:
        sql = ("SELECT c.*, f.val_r2, f.val_nmse, f.val_nmae, f.shape, f.fold_nmse FROM candidates c "
               "LEFT JOIN fits f ON f.candidate_id = c.id")
        if status:
            return self.db.execute(sql + " WHERE c.status = ? ORDER BY c.id", (status,)).fetchall()
        return self.db.execute(sql + " ORDER BY c.id").fetchall()

    def outcomes(self) -> list[tuple]:
        """What the run produced, slot by slot, without timings: equal for two runs that did the same work
        (wherever their fits ran, and however often they were interrupted)."""
        return [tuple(r) for r in self.db.execute(
            "SELECT c.generation, c.island, c.slot, c.formula, c.canonical_hash, c.status, c.reason, f.constants, "
            "f.val_r2, f.val_nmse, f.val_nmae, f.shape, f.fold_nmse FROM candidates c "
            "LEFT JOIN fits f ON f.candidate_id = c.id "
            "ORDER BY c.generation, c.island, c.slot")]

    def recent_rejections(self, before_generation: int, limit: int = 8) -> list[sqlite3.Row]:
        rows = self.db.execute("SELECT formula, reason, proposer FROM candidates WHERE status = 'rejected' "
                               "AND generation < ? ORDER BY id DESC LIMIT ?", (before_generation, limit)).fetchall()
        return rows[::-1]

    def clock_fits(self, reason: str) -> int:
        """How many candidates' fits a time limit cut short (their fit reason starts with `reason`)."""
        return self.db.execute("SELECT COUNT(*) FROM fits WHERE reason LIKE ?", (reason + "%",)).fetchone()[0]

    def events(self, kind: str) -> list[sqlite3.Row]:
        return self.db.execute("SELECT ts, kind, message FROM events WHERE kind = ? ORDER BY ts", (kind,)).fetchall()

    def counts(self, before_generation: int | None = None) -> dict[str, int]:
        where = "" if before_generation is None else f"WHERE generation < {int(before_generation)}"
        rows = self.db.execute(f"SELECT status, COUNT(*) AS n FROM candidates {where} GROUP BY status").fetchall()
        return {r["status"]: r["n"] for r in rows}

    # --- LLM calls: a ledger -----------------------------------------------------------------
    def add_llm_call(self, generation: int, island: int, call: LLMCall) -> None:
        """Record a call that no ledger recorded (a proposer without one); a call already recorded is kept."""
        d = asdict(call)
        self.db.execute(
            "INSERT OR IGNORE INTO llm_calls (generation, island, request_hash, model, prompt_tokens, "
            "completion_tokens, latency_s, cost_usd, cached, status, error, attempts, finish_reason, response_format, "
            "created_at, charged_tokens, charged_usd, sends) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (generation, island, d["request_hash"], d["model"], d["prompt_tokens"], d["completion_tokens"],
             d["latency_s"], d["cost_usd"], int(d["cached"]), d["status"], d.get("error", ""),
             json.dumps(d.get("attempts", [])), d.get("finish_reason", ""), d.get("response_format", ""), time.time(),
             d["prompt_tokens"] + d["completion_tokens"], d["cost_usd"], 0 if d["cached"] else 1))

    def llm_call(self, generation: int, island: int, request_hash: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM llm_calls WHERE generation = ? AND island = ? AND request_hash = ?",
                               (generation, island, request_hash)).fetchone()

    def llm_sent(self, generation: int, island: int, request_hash: str, model: str, tokens: int,
                 cost_usd: float) -> None:
        """A request is about to be sent: charge its worst case. A request sent before in this run (its reply
        lost to a kill, or never kept) keeps that earlier charge as well."""
        with self.transaction() as db:
            db.execute(
                "UPDATE llm_calls SET earlier_tokens = earlier_tokens + COALESCE(charged_tokens, 0), "
                "earlier_usd = earlier_usd + COALESCE(charged_usd, 0), status = 'sent', cached = 0, "
                "charged_tokens = ?, charged_usd = ?, sends = sends + 1, prompt_tokens = 0, completion_tokens = 0, "
                "cost_usd = 0 WHERE generation = ? AND island = ? AND request_hash = ?",
                (tokens, cost_usd, generation, island, request_hash))
            db.execute(
                "INSERT OR IGNORE INTO llm_calls (generation, island, request_hash, model, prompt_tokens, "
                "completion_tokens, latency_s, cost_usd, cached, status, error, attempts, finish_reason, "
                "response_format, created_at, charged_tokens, charged_usd, sends) "
                "VALUES (?,?,?,?,0,0,0,0,0,'sent','','[]','','',?,?,?,1)",
                (generation, island, request_hash, model, time.time(), tokens, cost_usd))

    def llm_settled(self, generation: int, island: int, call: LLMCall, tokens: int, cost_usd: float) -> None:
        """The call ended (reply, failure, or a cache hit): record it with what the budgets count for it."""
        d = asdict(call)
        values = (d["model"], d["prompt_tokens"], d["completion_tokens"], d["latency_s"], d["cost_usd"],
                  int(d["cached"]), d["status"], d.get("error", ""), json.dumps(d.get("attempts", [])),
                  d.get("finish_reason", ""), d.get("response_format", ""), tokens, cost_usd)
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE llm_calls SET model = ?, prompt_tokens = ?, completion_tokens = ?, latency_s = ?, "
                "cost_usd = ?, cached = ?, status = ?, error = ?, attempts = ?, finish_reason = ?, "
                "response_format = ?, charged_tokens = ?, charged_usd = ? "
                "WHERE generation = ? AND island = ? AND request_hash = ?",
                (*values, generation, island, d["request_hash"]))
            if cur.rowcount == 0:
                db.execute(
                    "INSERT INTO llm_calls (generation, island, request_hash, model, prompt_tokens, completion_tokens, "
                    "latency_s, cost_usd, cached, status, error, attempts, finish_reason, response_format, "
                    "charged_tokens, charged_usd, created_at, sends) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0)",
                    (generation, island, d["request_hash"], *values, time.time()))

    def llm_unsettled(self) -> list[sqlite3.Row]:
        """Requests sent whose end was never recorded (the run was killed while they were in flight)."""
        return self.db.execute("SELECT * FROM llm_calls WHERE status = 'sent' ORDER BY id").fetchall()

    def llm_usage(self, before_generation: int | None = None) -> dict[str, float]:
        """Calls (sends and cache hits), tokens and dollars over the run. `cost_usd`: paid, as the server reported
        (plus the worst case of sends whose reply was lost); `charged_usd` / `charged_tokens`: what the budgets
        count (the worst case of a request still in flight, and the recorded cost of a cache hit)."""
        where = "" if before_generation is None else f"WHERE generation < {int(before_generation)}"
        r = self.db.execute(
            "SELECT COUNT(*) + COALESCE(SUM(MAX(sends - 1, 0)), 0) AS calls, "
            "COALESCE(SUM(prompt_tokens),0) AS prompt_tokens, COALESCE(SUM(completion_tokens),0) AS completion_tokens, "
            "COALESCE(SUM(cost_usd),0) + COALESCE(SUM(earlier_usd),0) AS cost_usd, COALESCE(SUM(cached),0) AS cached, "
            "COALESCE(SUM(status != 'ok'),0) AS failed, "
            "COALESCE(SUM((LENGTH(attempts) - LENGTH(REPLACE(attempts, 'retrying', ''))) / 8),0) AS retries, "
            "COALESCE(SUM(COALESCE(charged_usd, cost_usd) + earlier_usd), 0) AS charged_usd, "
            "COALESCE(SUM(COALESCE(charged_tokens, prompt_tokens + completion_tokens) + earlier_tokens), 0) "
            f"AS charged_tokens FROM llm_calls {where}").fetchone()
        return dict(r)

    def llm_errors(self, before_generation: int | None = None) -> list[tuple[str, int]]:
        """(error, how many calls ended with it), most frequent first."""
        where = "" if before_generation is None else f"AND generation < {int(before_generation)}"
        rows = self.db.execute(
            "SELECT status || ': ' || COALESCE(NULLIF(error, ''), 'no message') AS e, COUNT(*) AS n FROM llm_calls "
            f"WHERE status != 'ok' {where} GROUP BY e ORDER BY n DESC, e").fetchall()
        return [(r["e"], int(r["n"])) for r in rows]

    # --- generations ---------------------------------------------------------------------
    def complete_generation(self, generation: int, islands: list[list[int]], best_id: int | None,
                            best_val_r2: float | None) -> None:
        self.db.execute("INSERT OR REPLACE INTO generations VALUES (?,?,?,?,?)",
                        (generation, json.dumps(islands), best_id, best_val_r2, time.time()))

    def last_generation(self) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM generations ORDER BY generation DESC LIMIT 1").fetchone()

    def generation_history(self) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT generation, best_id, best_val_r2 FROM generations ORDER BY generation").fetchall()

    # --- final report --------------------------------------------------------------------
    def add_final(self, candidate_id: int, role: str, constants: dict, status: str, test: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO final VALUES (?,?,?,?,?,?,?)",
                        (candidate_id, role, json.dumps(constants), status, test["r2"], test["nmse"], test["nmae"]))
