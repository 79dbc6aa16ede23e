"""What must agree between deploy/kubernetes/, the Dockerfile and the server itself.

Usage: python check_deploy.py PATH_TO_CROSSRANK   (run by scripts/check-deploy.sh, whose venv
has PyYAML through kubernetes-validate). Each failed check prints one line naming it; exit 1.
"""

import glob
import re
import subprocess
import sys

import yaml

BIN = sys.argv[1]
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)


docs = {}
for path in sorted(glob.glob("deploy/kubernetes/*.yaml")):
    for d in yaml.safe_load_all(open(path)):
        docs[d["kind"]] = d

dep = docs["Deployment"]
pod = dep["spec"]["template"]["spec"]
(c,) = pod["containers"]
args = c["args"]


def arg(flag):
    return args[args.index(flag) + 1] if flag in args else None


# Every flag the Deployment passes is one `crossrank serve` knows.
helptext = subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True, check=True).stdout
for flag in (a for a in args if a.startswith("--")):
    check(re.search(rf"\s{re.escape(flag)}[\s=<]", helptext), f"args: crossrank serve has no {flag}")
check(args[0] == "serve", "args: the first argument is not `serve`")

# The probes, the Service and the scrape annotation use the port the server listens on.
port = int(arg("--port") or 8080)
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
check(ports.get("http") == port, f"ports: containerPort http is {ports.get('http')}, --port is {port}")
check(arg("--host") == "0.0.0.0", "args: --host must be 0.0.0.0 in a pod (127.0.0.1 is unreachable)")
for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
    get = c[probe]["httpGet"]
    check(get["path"] == "/health", f"{probe}: path is {get['path']}, not /health")
    check(get["port"] in ("http", port), f"{probe}: port {get['port']} is not the server's")
ann = dep["spec"]["template"]["metadata"]["annotations"]
check(int(ann["prometheus.io/port"]) == port, "annotations: prometheus.io/port is not --port")
svc = docs["Service"]
check(all(p["targetPort"] in ("http", port) for p in svc["spec"]["ports"]), "Service: targetPort is not the server's")
check(svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"], "Service: selector differs from the Deployment's")
check(docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"], "PDB: selector differs")

# The grace period covers the preStop pause and the longest accepted request, plus 5 s.
pause = c["lifecycle"]["preStop"]["sleep"]["seconds"]
timeout_ms = arg("--request-timeout-ms")
check(timeout_ms is not None, "args: no --request-timeout-ms, so the drain is unbounded")
need = pause + (int(timeout_ms or 0) + 999) // 1000 + 5
grace = pod["terminationGracePeriodSeconds"]
check(grace >= need, f"terminationGracePeriodSeconds {grace} < preStop {pause} s + request timeout + 5 s = {need}")

# The GPU is requested, and the HPA scales on a metric the server exports, through the adapter.
check(c["resources"]["limits"].get("nvidia.com/gpu") == "1", "resources: no nvidia.com/gpu limit")
hpa = docs["HorizontalPodAutoscaler"]
check(hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"], "HPA: scaleTargetRef is not the Deployment")
(metric,) = hpa["spec"]["metrics"]
name = metric["pods"]["metric"]["name"]
metrics_src = open("src/serve/metrics.rs").read()
check(name.startswith("crossrank_") and f'"{name[len("crossrank_"):]}"' in metrics_src, f"HPA: the server exports no {name}")
rules = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])["rules"]
check(any(r["name"]["as"] == name and name in r["seriesQuery"] for r in rules), f"adapter: no rule serves {name}")

# The Dockerfile: two stages, the pinned nvcc, the binary copied into a CUDA runtime base.
docker = open("Dockerfile").read()
froms = re.findall(r"^FROM (\S+)(?: AS (\S+))?", docker, re.M)
check(len(froms) == 2, f"Dockerfile: {len(froms)} stages, not 2")
check(all(":" in image and not image.endswith(":latest") for image, _ in froms), "Dockerfile: a base image is not pinned")
check(any("nvidia/cuda" in image and "runtime" in image for image, _ in froms[1:]), "Dockerfile: the run stage is not a CUDA runtime image")
check("scripts/install-nvcc.sh" in docker and "--features cuda" in docker, "Dockerfile: not built with the pinned nvcc and --features cuda")
check(re.search(r"^COPY --from=build /crossrank /usr/local/bin/crossrank$", docker, re.M) and '"/usr/local/bin/crossrank"' in docker, "Dockerfile: the entrypoint is not the copied binary")
check(c["image"].split(":")[0] == "crossrank", "Deployment: image is not the Dockerfile's crossrank")

for f in failures:
    print(f"check_deploy: {f}", file=sys.stderr)
if failures:
    sys.exit(1)
print(f"check_deploy: {len(docs)} manifests, Dockerfile: every check passed")
