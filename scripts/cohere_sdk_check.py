"""Reranks through a running `crossrank serve` with the official cohere SDK, unchanged.

Usage: python cohere_sdk_check.py BASE_URL API_KEY MODEL_NAME
Checks Client.rerank (v1) and ClientV2.rerank (v2) against the server's own /v1/rerank answer
fetched with plain HTTP for the same model: same indices, same order, same scores (the SDK must
not change them), and the answer names the model. The server serves MODEL beside a default
model of another family, so the SDK's `model` must route the request.
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
    body = json.dumps({"model": MODEL, "query": QUERY, "documents": DOCS, "top_n": top_n}).encode()
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
    assert got != default, f"{name}: scored by the default model, not {MODEL}"
    assert got == want, f"{name}: SDK gave {got}, the server said {want}"
    if with_docs:
        for r in results:
            assert r.document.text == DOCS[r.index], f"{name}: document {r.index}"
    print(f"{name}: ok, {len(got)} results, best index {got[0][0]} score {got[0][1]:.6f}")


# Loopback only: no proxy from the environment.
http = httpx.Client(trust_env=False, timeout=30)
want = plain(3)
# The default model's answer, to tell a routed request from one that was not.
body = json.dumps({"query": QUERY, "documents": DOCS, "top_n": 3}).encode()
req = urllib.request.Request(
    BASE + "/v1/rerank",
    data=body,
    headers={"Content-Type": "application/json", "Authorization": "Bearer " + KEY},
)
with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=30) as r:
    answer = json.load(r)
    default = [(x["index"], x["relevance_score"]) for x in answer["results"]]
    assert answer["model"] != MODEL, f"the default model is {MODEL}: the check cannot tell routing"
assert default != want, "the two models answer alike: the check cannot tell routing"
assert len(want) == 3 and [s for _, s in want] == sorted((s for _, s in want), reverse=True)

v1 = cohere.Client(api_key=KEY, base_url=BASE, httpx_client=http)
r = v1.rerank(model=MODEL, query=QUERY, documents=DOCS, top_n=3, return_documents=True)
check("cohere.Client.rerank (v1)", r.results, want, with_docs=True)
unknown = None
try:
    v1.rerank(model="no-such-model", query=QUERY, documents=DOCS)
except cohere.errors.NotFoundError:
    unknown = "404"
assert unknown == "404", "an unknown model was not the SDK's 404"
print("unknown model: 404, as the SDK expects")
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
