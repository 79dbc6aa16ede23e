"""Reranks through a running `crossrank serve` with the official cohere SDK, unchanged.

Usage: python cohere_sdk_check.py BASE_URL API_KEY MODEL_NAME
Checks Client.rerank (v1) and ClientV2.rerank (v2) against the server's own /v1/rerank answer
fetched with plain HTTP: same indices, same order, same scores (the SDK must not change them).
"""

import json
import sys
import urllib.request

import cohere
import httpx

BASE, KEY, MODEL = sys.argv[1], sys.argv[2], sys.argv[3]
QUERY = "How do cross-encoders rerank search results?"
DOCS = [
    "A cross-encoder reads the query and the passage together and returns one relevance score.",
    "The weather in Paris was sunny, but the evening brought heavy rain.",
    "Rerankers sort the candidates that a fast first-stage retriever has already found.",
    "She ordered a coffee, a croissant and a glass of orange juice for breakfast.",
]


def plain(top_n):
    body = json.dumps({"query": QUERY, "documents": DOCS, "top_n": top_n}).encode()
    req = urllib.request.Request(
        BASE + "/v1/rerank",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": "Bearer " + KEY},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=30) as r:
        return [(x["index"], x["relevance_score"]) for x in json.load(r)["results"]]


def check(name, results, want, with_docs):
    got = [(r.index, r.relevance_score) for r in results]
    assert got == want, f"{name}: SDK gave {got}, the server said {want}"
    if with_docs:
        for r in results:
            assert r.document.text == DOCS[r.index], f"{name}: document {r.index}"
    print(f"{name}: ok, {len(got)} results, best index {got[0][0]} score {got[0][1]:.6f}")


# Loopback only: no proxy from the environment.
http = httpx.Client(trust_env=False, timeout=30)
want = plain(3)
assert len(want) == 3 and [s for _, s in want] == sorted((s for _, s in want), reverse=True)

v1 = cohere.Client(api_key=KEY, base_url=BASE, httpx_client=http)
r = v1.rerank(model=MODEL, query=QUERY, documents=DOCS, top_n=3, return_documents=True)
check("cohere.Client.rerank (v1)", r.results, want, with_docs=True)
assert r.id, "v1: no id"

v2 = cohere.ClientV2(api_key=KEY, base_url=BASE, httpx_client=http)
r = v2.rerank(model=MODEL, query=QUERY, documents=DOCS, top_n=3)
check("cohere.ClientV2.rerank (v2)", r.results, want, with_docs=False)

# A wrong key must be refused, and the SDK must surface it as its 401 error.
bad = cohere.Client(api_key="wrong", base_url=BASE, httpx_client=http)
try:
    bad.rerank(model=MODEL, query=QUERY, documents=DOCS)
except cohere.errors.UnauthorizedError:
    print("wrong API key: refused with 401, as the SDK expects")
else:
    raise AssertionError("a wrong API key was accepted")
print(f"cohere {cohere.__version__ if hasattr(cohere, '__version__') else '?'}: all checks passed")
