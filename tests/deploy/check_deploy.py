#!/usr/bin/env python3
"""Static checks of the deployment files under deploy/ (no container engine, no cluster needed).

  python3 tests/deploy/check_deploy.py [--strict] [--sagad PATH] [--sagactl PATH]
                                       [--shop-participants PATH] [--root REPO]

Checks that every YAML file under deploy/ parses (all documents), and the references between
the files and the binaries:
  * every SAGA_* variable and sagad flag used by compose, Kubernetes, the Dockerfile and
    .env.example is in `sagad --help` (CLI11 prints `--flag ... (Env:SAGA_X)`); a missing one
    fails only with --strict, and never if it is in PENDING_FLAGS (announced, not landed yet);
    likewise the sagactl / shop-participants flags used by health checks and commands;
  * ports agree: sagad's listen address, container ports, probes, Services' targetPorts,
    compose's published ports and health checks, the Dockerfile's EXPOSE and HEALTHCHECK, the
    Prometheus annotations, the participants' address in the definitions;
  * the sagad Deployment: replicas >= 2, native gRPC probes on the gRPC port, grace period >=
    drain timeout + 10 s, SAGA_OWNER_ID from the pod name, the ConfigMap/Secret it names exist
    with the keys it mounts, the files SAGA_DATABASE_URL_FILE / SAGA_DEFINITIONS /
    SAGA_PROTO_PATH point at are mounted; every Deployment runs as non-root with a read-only
    root file system, no privilege escalation and no capabilities; the PodDisruptionBudget;
  * kustomization.yaml lists every manifest and only existing files;
  * the compose and ConfigMap copies of saga-defs/ differ from the originals only in the
    participants' `target:` lines (deploy/gen-defs.sh regenerates them), and the ConfigMap's
    shop.proto is examples/participants/proto/shop/v1/shop.proto;
  * the Dockerfile: every apt package exists (apt-cache show, when apt has lists of the same
    Debian release), the runtime stages run as a non-root USER, sagad's entrypoint is tini, the
    runtime stage installs every library the built binaries link (ldd + dpkg -S);
  * `kubectl kustomize deploy/k8s` and `docker compose config` succeed, when those tools work.
Prints each failure as `FAIL <file>: <what>` and exits 1 if there is any.
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys

try:
    import yaml
except ImportError:  # pragma: no cover
    print("check_deploy: PyYAML is missing (Debian: apt-get install python3-yaml)", file=sys.stderr)
    sys.exit(2)

# Flags and environment variables that the manifests already use but that sagad does not have
# yet, because another change adds them. They may be missing from `sagad --help` even with
# --strict. Remove an entry once it has landed (the check says so).
PENDING_FLAGS = set()

# Kubernetes / compose names used below.
NAMESPACE = "saga"
SAGAD_GRPC_PORT = 50051      # sagad's default --listen port; checked against `sagad --help`
METRICS_PORT = 9090
PARTICIPANTS_PORT = 50061


class Checker:
    def __init__(self, root, strict):
        self.root = root
        self.strict = strict
        self.failures = []
        self.passed = 0

    def rel(self, path):
        return os.path.relpath(path, self.root)

    def ok(self, cond, where, what):
        """Records one check: `what` is the failure message."""
        if cond:
            self.passed += 1
        else:
            self.fail(where, what)
        return cond

    def fail(self, where, what):
        self.failures.append((where, what))
        print(f"FAIL {where}: {what}")

    def warn(self, where, what):
        print(f"WARN {where}: {what}")

    def note(self, what):
        print(f"note: {what}")


# ---------------------------------------------------------------------------------------------
# helpers


def port_of(address):
    """'0.0.0.0:50051' -> 50051; '[::]:1' -> 1; None if there is no port."""
    if address is None:
        return None
    m = re.search(r":(\d+)$", str(address).strip())
    return int(m.group(1)) if m else None


def parse_duration(text):
    """'20s', '1m30s', '500ms', 30 -> seconds (float); None if unparsable."""
    if isinstance(text, (int, float)):
        return float(text)
    text = str(text).strip()
    total, pos = 0.0, 0
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6, "ns": 1e-9}
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos > 0 else None


def flags_in(args):
    """The --long flags in a command line (a list or a string)."""
    if isinstance(args, str):
        args = args.split()
    out = []
    for a in args or []:
        a = str(a)
        if a.startswith("--"):
            out.append(a.split("=", 1)[0])
    return out


def arg_value(args, flag):
    """The value of `flag` in an argument list (`--f v` or `--f=v`)."""
    args = [str(a) for a in (args or [])]
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def help_of(binary):
    """(flags, envs, defaults) read from `binary --help`. Understands CLI11's default format
    (`--lease TEXT=10s (Env:SAGA_LEASE)`), the bracketed one (`--lease VALUE  ... [default: 10s]
    [env: SAGA_LEASE]`) and sagactl's `(env SAGA_ADDRESS)`."""
    out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    flags = set(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9-]*)", text))
    envs = set(re.findall(r"\(Env:\s*([A-Z0-9_]+)\)", text, re.I))
    envs |= set(re.findall(r"\[env:\s*([A-Z0-9_]+)\]", text, re.I))
    envs |= set(re.findall(r"\(env ([A-Z0-9_]+)\)", text))
    defaults = {}
    for line in text.splitlines():
        m = re.match(r"^\s+(?:-\w,)?(--[a-z0-9-]+)(?: [A-Z]+(?: \.\.\.)?(?:=(\S+))?)?", line)
        if not m:
            continue
        d = m.group(2)
        b = re.search(r"\[default:\s*([^\]]*)\]", line)
        if b:
            d = b.group(1).strip()
        if d is not None:
            defaults[m.group(1)] = d
    return flags, envs, defaults


_yaml_cache = {}


def load_yaml_docs(checker, path):
    """The documents of a YAML file (parsed once; a parse error is reported once)."""
    path = os.path.abspath(path)
    if path not in _yaml_cache:
        _yaml_cache[path] = _load_yaml_docs(checker, path)
    return _yaml_cache[path]


def _load_yaml_docs(checker, path):
    try:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        checker.ok(True, checker.rel(path), "")
        return docs
    except yaml.YAMLError as e:
        checker.fail(checker.rel(path), f"YAML does not parse: {e}")
        return []


def env_list_to_dict(env):
    """compose environment (dict or list of K=V) -> dict."""
    if isinstance(env, dict):
        return {str(k): v for k, v in env.items()}
    out = {}
    for item in env or []:
        k, _, v = str(item).partition("=")
        out[k] = v
    return out


def compose_ports(service):
    """[(host_ip, host_port, container_port)] of a compose service's `ports`."""
    out = []
    for p in service.get("ports", []) or []:
        if isinstance(p, dict):
            out.append((p.get("host_ip"), int(p["published"]) if p.get("published") else None,
                        int(p["target"])))
            continue
        parts = str(p).split("/")[0].split(":")
        if len(parts) == 3:
            out.append((parts[0], int(parts[1]), int(parts[2])))
        elif len(parts) == 2:
            out.append((None, int(parts[0]), int(parts[1])))
        else:
            out.append((None, None, int(parts[0])))
    return out


# ---------------------------------------------------------------------------------------------
# the Dockerfile


def parse_dockerfile(path):
    """[(instruction, argument text, line)] with continuations joined and comments dropped."""
    instructions, buf, start = [], "", 0
    with open(path, encoding="utf-8") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if line.lstrip().startswith("#") and (buf or not line.lstrip().startswith("# syntax")):
                continue
            if not buf:
                if not line.strip():
                    continue
                start = n
            if line.rstrip().endswith("\\"):
                buf += line.rstrip()[:-1] + " "
                continue
            buf += line
            word, _, rest = buf.strip().partition(" ")
            instructions.append((word.upper(), rest.strip(), start))
            buf = ""
    return instructions


def dockerfile_stages(instructions):
    """[{name, base, instructions}] in order."""
    stages = []
    for ins, arg, line in instructions:
        if ins == "FROM":
            m = re.match(r"(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?", arg, re.I)
            stages.append({"base": m.group(1), "name": (m.group(2) or str(len(stages))),
                           "line": line, "ins": []})
        elif stages:
            stages[-1]["ins"].append((ins, arg, line))
    return stages


def apt_packages(run_text):
    """Package names of the `apt-get install` commands in a RUN text."""
    pkgs = []
    for segment in re.split(r"&&|\|\||;|\|", run_text):
        words = segment.split()
        for i, w in enumerate(words):
            if w == "install" and i > 0 and words[i - 1] in ("apt-get", "apt"):
                for p in words[i + 1:]:
                    if p.startswith("-") or "=" in p and not p.split("=")[0].strip():
                        continue
                    pkgs.append(p.split("=")[0])
    return pkgs


def apt_usable(checker):
    """apt-cache answers for the images' release (Debian bookworm) here?"""
    if not shutil.which("apt-cache"):
        return False, "apt-cache is not installed"
    if not glob.glob("/var/lib/apt/lists/*_Packages*"):
        return False, "apt has no package lists (run apt-get update)"
    codename = ""
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            m = re.search(r"^VERSION_CODENAME=(\S+)", f.read(), re.M)
            codename = m.group(1) if m else ""
    except OSError:
        pass
    if codename != "bookworm":
        return False, f"this machine is '{codename or 'unknown'}', the images are Debian bookworm"
    return True, ""


def apt_existing(names):
    """The subset of `names` that apt knows (one apt-cache call: it is slow on a busy machine)."""
    if not names:
        return set()
    r = subprocess.run(["apt-cache", "show", "--no-all-versions", *sorted(set(names))],
                       capture_output=True, text=True, timeout=300)
    return set(re.findall(r"^Package: (\S+)", r.stdout, re.M))


def apt_closure(names):
    """Every package that `names` pull in (Depends / PreDepends, recursively)."""
    r = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                        "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
                        *names], capture_output=True, text=True, timeout=120)
    out = set(names)
    for line in r.stdout.splitlines():
        m = re.match(r"^\s*(?:\|)?(?:Pre)?Depends:\s+<?([^\s>:]+)", line)
        if m:
            out.add(m.group(1))
        elif line and not line.startswith(" "):
            out.add(line.strip().strip("<>").split(":")[0])
    return out


def linked_packages(binaries):
    """{binary: set of Debian packages owning the shared libraries it links} and the libraries
    no package owns (ldd + one dpkg -S call)."""
    libs = {}
    for b in binaries:
        r = subprocess.run(["ldd", b], capture_output=True, text=True, timeout=60)
        libs[b] = re.findall(r"=>\s+(/\S+)", r.stdout)

    def candidates(lib):
        out = [lib, os.path.realpath(lib)]
        for x in list(out):  # usrmerge: dpkg knows one of /lib/... and /usr/lib/...
            out.append("/usr" + x if not x.startswith("/usr/") else x[len("/usr"):])
        return out

    paths = sorted({c for ls in libs.values() for lib in ls for c in candidates(lib)})
    r = subprocess.run(["dpkg", "-S", *paths], capture_output=True, text=True, timeout=300)
    owner = {}
    for line in r.stdout.splitlines():
        pkgs, _, path = line.partition(": ")
        for p in pkgs.split(", "):
            owner.setdefault(path.strip(), p.split(":")[0].strip())
    result, unknown = {}, []
    for b, ls in libs.items():
        result[b] = set()
        for lib in ls:
            o = next((owner[c] for c in candidates(lib) if c in owner), None)
            if o:
                result[b].add(o)
            else:
                unknown.append((b, lib))
    return result, unknown


def check_dockerfile(c, path, bins):
    where = c.rel(path)
    if not c.ok(os.path.exists(path), where, "missing"):
        return {}
    stages = dockerfile_stages(parse_dockerfile(path))
    by_name = {s["name"]: s for s in stages}
    c.ok(len(stages) >= 3, where, f"expected a multi-stage build (build, runtime, ...), found "
         f"{len(stages)} stage(s)")

    # apt packages
    usable, why = apt_usable(c)
    if not usable:
        c.note(f"apt package names not checked: {why}")
    runtime_pkgs, named = {}, []
    for s in stages:
        for ins, arg, line in s["ins"]:
            if ins != "RUN":
                continue
            for p in apt_packages(arg):
                runtime_pkgs.setdefault(s["name"], []).append(p)
                named.append((s["name"], p, line))
    if usable:
        known = apt_existing([p for _, p, _ in named])
        for stage_name, p, line in named:
            c.ok(p in known, f"{where}:{line}",
                 f"stage {stage_name}: apt package '{p}' does not exist in Debian bookworm")

    def chain(stage):
        """The stage and the stages it is built FROM, nearest first."""
        out = []
        while stage is not None:
            out.append(stage)
            stage = by_name.get(stage["base"])
        return out

    def effective(stage, instruction):
        for s in chain(stage):
            for ins, arg, line in reversed(s["ins"]):
                if ins == instruction:
                    return arg, line
        return None, None

    build = by_name.get("build")
    c.ok(build is not None and build["base"].startswith("debian:bookworm"), where,
         "no build stage `FROM debian:bookworm AS build`")
    if build:
        text = " ".join(a for i, a, _ in build["ins"] if i == "RUN")
        for opt in ("-DCMAKE_BUILD_TYPE=Release", "-DSAGA_BUILD_TESTS=OFF", "-DSAGA_BUILD_BENCH=OFF",
                    "-G Ninja"):
            c.ok(opt in text, where, f"the build stage does not configure with {opt}")

    final_stages = [s for s in stages if s is not build and s["name"] not in ("build",)]
    runtime_roots = [s for s in final_stages if not by_name.get(s["base"])]
    for s in runtime_roots:
        c.ok(s["base"] == "debian:bookworm-slim", f"{where}:{s['line']}",
             f"runtime stage {s['name']} should be FROM debian:bookworm-slim, not {s['base']}")
    for s in final_stages:
        user, line = effective(s, "USER")
        c.ok(user is not None and user.split(":")[0] not in ("root", "0"),
             f"{where}:{s['line']}", f"stage {s['name']} runs as root (no non-root USER)")
        if user is not None:
            c.ok(user.split(":")[0] == "10001", f"{where}:{line}",
                 f"stage {s['name']}: USER {user}, expected uid 10001 (the manifests' runAsUser)")

    sagad = by_name.get("sagad")
    info = {"stages": by_name, "runtime_pkgs": runtime_pkgs}
    if c.ok(sagad is not None, where, "no stage named `sagad` (the orchestrator image)"):
        entry, line = effective(sagad, "ENTRYPOINT")
        c.ok(entry is not None and re.sub(r"\s", "", entry) == '["tini","--","sagad"]',
             f"{where}:{line or sagad['line']}", f'sagad ENTRYPOINT should be ["tini", "--", '
             f'"sagad"], not {entry}')
        hc, line = effective(sagad, "HEALTHCHECK")
        c.ok(hc is not None and "sagactl" in hc and "health" in hc, f"{where}:{sagad['line']}",
             "sagad stage has no HEALTHCHECK running `sagactl ... health`")
        if hc:
            cmd = re.findall(r'"([^"]*)"', hc.partition("CMD")[2]) or hc.partition("CMD")[2].split()
            info["healthcheck_cmd"] = cmd
            c.ok(port_of(arg_value(cmd, "--address")) == SAGAD_GRPC_PORT, f"{where}:{line}",
                 f"HEALTHCHECK checks {arg_value(cmd, '--address')}, not port {SAGAD_GRPC_PORT}")
        exposed, line = effective(sagad, "EXPOSE")
        ports = {int(p.split("/")[0]) for p in (exposed or "").split()}
        c.ok({SAGAD_GRPC_PORT, METRICS_PORT} <= ports, f"{where}:{line or sagad['line']}",
             f"sagad stage should EXPOSE {SAGAD_GRPC_PORT} and {METRICS_PORT}, exposes {sorted(ports)}")
        info["env"] = {}
        for s in reversed(chain(sagad)):
            for ins, arg, _ in s["ins"]:
                if ins == "ENV":
                    for k, v in re.findall(r"(\w+)=(\S+)", arg):
                        info["env"][k] = v
    part = by_name.get("participants")
    if c.ok(part is not None, where, "no stage named `participants` (the example participants)"):
        entry, line = effective(part, "ENTRYPOINT")
        c.ok(entry is not None and "shop-participants" in entry and "tini" in entry,
             f"{where}:{line or part['line']}", "participants ENTRYPOINT should run "
             "shop-participants under tini")
        exposed, line = effective(part, "EXPOSE")
        c.ok(str(PARTICIPANTS_PORT) in (exposed or ""), f"{where}:{line or part['line']}",
             f"participants stage should EXPOSE {PARTICIPANTS_PORT}")

    # runtime libraries: everything the built binaries link must be installed in the runtime
    # stage, directly or as a dependency (apt and its dependencies are in bookworm-slim).
    base_stage = runtime_roots[0] if runtime_roots else None
    if base_stage and usable and shutil.which("ldd") and shutil.which("dpkg"):
        installed = runtime_pkgs.get(base_stage["name"], [])
        c.ok("tini" in installed, where, f"stage {base_stage['name']} does not install tini")
        have = apt_closure(installed + ["apt", "base-files", "libc-bin"])
        present = {n: b for n, b in bins.items() if b and os.path.exists(b)}
        needed, unknown = linked_packages(list(present.values()))
        for b, lib in unknown:
            c.warn(where, f"{os.path.basename(b)} links {lib}, which no Debian package owns")
        for name, binary in present.items():
            for p in sorted(needed[binary]):
                c.ok(p in have, f"{where}:{base_stage['line']}",
                     f"{name} links a library of package {p}, which the runtime stage "
                     f"{base_stage['name']} does not install")
    else:
        c.note("runtime libraries of the binaries not checked (needs apt lists for bookworm, "
               "ldd, dpkg and the binaries)")
    return info


# ---------------------------------------------------------------------------------------------
# Kubernetes


def k8s_objects(c, k8s_dir):
    objs = []
    for path in sorted(glob.glob(os.path.join(k8s_dir, "*.y*ml"))):
        for d in load_yaml_docs(c, path):
            if isinstance(d, dict):
                d["__file__"] = path
                objs.append(d)
    return objs


def find(objs, kind, name=None):
    return [o for o in objs if o.get("kind") == kind
            and (name is None or o.get("metadata", {}).get("name") == name)]


def container_port(container, ref):
    """A Service targetPort (name or number) -> the container's port number, or None."""
    for p in container.get("ports", []) or []:
        if ref == p.get("name") or ref == p.get("containerPort"):
            return p.get("containerPort")
    return None


def env_of(container):
    return {e["name"]: e for e in container.get("env", []) or []}


def mounted_files(pod_spec, container, objs):
    """{absolute path: (kind, object name, key)} of configMap/secret items the container mounts,
    plus the mount points themselves mapped to (kind, name, None)."""
    volumes = {v["name"]: v for v in pod_spec.get("volumes", []) or []}
    out = {}
    for m in container.get("volumeMounts", []) or []:
        v = volumes.get(m["name"])
        if not v:
            continue
        for kind, key_name in (("configMap", "name"), ("secret", "secretName")):
            if kind in v:
                src = v[kind]
                name = src.get(key_name)
                out[m["mountPath"]] = (kind, name, None)
                items = src.get("items")
                if items:
                    for it in items:
                        out[os.path.join(m["mountPath"], it["path"])] = (kind, name, it["key"])
                else:
                    obj_kind = "ConfigMap" if kind == "configMap" else "Secret"
                    for o in find(objs, obj_kind, name):
                        for k in list((o.get("data") or {}).keys()) + \
                                list((o.get("stringData") or {}).keys()):
                            out[os.path.join(m["mountPath"], k)] = (kind, name, k)
    return out


def check_security(c, where, pod_spec, container, uid):
    psc = pod_spec.get("securityContext", {}) or {}
    csc = container.get("securityContext", {}) or {}
    non_root = csc.get("runAsNonRoot", psc.get("runAsNonRoot"))
    c.ok(non_root is True, where, f"container {container['name']}: runAsNonRoot is not true")
    user = csc.get("runAsUser", psc.get("runAsUser"))
    c.ok(user is None or user == uid, where,
         f"container {container['name']}: runAsUser {user}, the image's user is {uid}")
    c.ok(csc.get("readOnlyRootFilesystem") is True, where,
         f"container {container['name']}: readOnlyRootFilesystem is not true")
    c.ok(csc.get("allowPrivilegeEscalation") is False, where,
         f"container {container['name']}: allowPrivilegeEscalation is not false")
    drop = (csc.get("capabilities", {}) or {}).get("drop", []) or []
    c.ok("ALL" in drop, where, f"container {container['name']}: capabilities do not drop ALL")
    res = container.get("resources", {}) or {}
    c.ok(bool(res.get("requests")) and bool(res.get("limits")), where,
         f"container {container['name']}: no resources requests/limits")


def definition_targets(text):
    """{participant: target} of a workflow file's text."""
    d = yaml.safe_load(text) or {}
    return {k: (v or {}).get("target") for k, v in (d.get("participants") or {}).items()}


def compare_definition(c, where, copy_text, original_path, expected_target):
    """The copy must equal the original but for `target:` lines, which must be expected_target."""
    with open(original_path, encoding="utf-8") as f:
        original = f.read()
    a, b = original.splitlines(), copy_text.splitlines()
    if not c.ok(len(a) == len(b), where, f"has {len(b)} lines, {c.rel(original_path)} has "
                f"{len(a)}: regenerate it with deploy/gen-defs.sh"):
        return
    target_re = re.compile(r"^\s*target:\s*")
    for n, (x, y) in enumerate(zip(a, b), 1):
        if x == y:
            continue
        if target_re.match(x) and target_re.match(y):
            c.ok(y.split("target:", 1)[1].strip() == expected_target, f"{where}: line {n}",
                 f"target is {y.split('target:', 1)[1].strip()}, expected {expected_target}")
        else:
            c.fail(f"{where}: line {n}", f"differs from {c.rel(original_path)} outside a target "
                   f"line (run deploy/gen-defs.sh): {y.strip()!r} vs {x.strip()!r}")
    c.ok(copy_text.endswith("\n") == original.endswith("\n"), where,
         f"final newline differs from {c.rel(original_path)}")
    for p, t in definition_targets(copy_text).items():
        c.ok(t == expected_target, where, f"participant {p} targets {t}, expected {expected_target}")


def check_k8s(c, root, k8s_dir, sagad_drain_default):
    objs = k8s_objects(c, k8s_dir)
    uses = []  # (where, SAGA_* names and flags used)

    # kustomization lists every manifest, and only existing files
    kpath = os.path.join(k8s_dir, "kustomization.yaml")
    kust = find(objs, "Kustomization")
    manifests = {os.path.basename(p) for p in glob.glob(os.path.join(k8s_dir, "*.y*ml"))} - {
        "kustomization.yaml", "kustomization.yml"}
    if c.ok(len(kust) == 1, c.rel(kpath), "no kustomization.yaml (kind: Kustomization)"):
        resources = kust[0].get("resources", []) or []
        for r in resources:
            c.ok(os.path.exists(os.path.join(k8s_dir, r)), c.rel(kpath),
                 f"lists {r}, which does not exist")
        for m in sorted(manifests - set(resources)):
            c.fail(c.rel(kpath), f"does not list {m}")
        c.passed += 1 if manifests <= set(resources) else 0
        c.ok(kust[0].get("namespace") == NAMESPACE, c.rel(kpath),
             f"namespace is {kust[0].get('namespace')}, expected {NAMESPACE}")
    ns = find(objs, "Namespace")
    c.ok(len(ns) == 1 and ns[0]["metadata"]["name"] == NAMESPACE, c.rel(k8s_dir),
         f"expected one Namespace named {NAMESPACE}")
    for o in objs:
        if o.get("kind") not in (None, "Kustomization", "Namespace"):
            c.ok(o.get("metadata", {}).get("namespace") in (None, NAMESPACE), c.rel(o["__file__"]),
                 f"{o['kind']} {o['metadata'].get('name')} sets another namespace")

    # the sagad Deployment
    deps = find(objs, "Deployment")
    sagad_deps = [d for d in deps if any("sagad" in str(ct.get("image", "")) for ct in
                  d["spec"]["template"]["spec"].get("containers", []))]
    part_deps = [d for d in deps if any("shop-participants" in str(ct.get("image", "")) for ct in
                 d["spec"]["template"]["spec"].get("containers", []))]
    services = find(objs, "Service")

    def service_for(dep):
        labels = dep["spec"]["template"]["metadata"].get("labels", {})
        return [s for s in services if s["spec"].get("selector") and
                all(labels.get(k) == v for k, v in s["spec"]["selector"].items())]

    if c.ok(len(sagad_deps) == 1, c.rel(k8s_dir), "expected one Deployment running the sagad image"):
        d = sagad_deps[0]
        where = c.rel(d["__file__"])
        spec, pod = d["spec"], d["spec"]["template"]["spec"]
        ct = [x for x in pod["containers"] if "sagad" in str(x.get("image"))][0]
        env = env_of(ct)
        uses.append((where, list(env), flags_in((ct.get("command") or [])[1:] + (ct.get("args") or []))))
        c.ok((spec.get("replicas") or 1) >= 2, where, f"replicas is {spec.get('replicas')}, need >= 2")
        c.ok(spec["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items(),
             where, "selector does not match the pod labels")

        grpc_port = container_port(ct, "grpc")
        metrics_port = container_port(ct, "metrics")
        c.ok(grpc_port == SAGAD_GRPC_PORT, where,
             f"container port 'grpc' is {grpc_port}, expected {SAGAD_GRPC_PORT}")
        c.ok(metrics_port == METRICS_PORT, where,
             f"container port 'metrics' is {metrics_port}, expected {METRICS_PORT}")
        listen = env.get("SAGA_LISTEN", {}).get("value")
        if listen is not None:
            c.ok(port_of(listen) == grpc_port, where,
                 f"SAGA_LISTEN {listen} is not the container port {grpc_port}")
        ml = env.get("SAGA_METRICS_LISTEN", {}).get("value")
        c.ok(ml is not None and port_of(ml) == metrics_port, where,
             f"SAGA_METRICS_LISTEN {ml} is not the metrics container port {metrics_port}")
        ann = d["spec"]["template"]["metadata"].get("annotations", {}) or {}
        c.ok(ann.get("prometheus.io/scrape") == "true", where,
             "pod annotation prometheus.io/scrape is not \"true\"")
        c.ok(str(ann.get("prometheus.io/port")) == str(metrics_port), where,
             f"pod annotation prometheus.io/port is {ann.get('prometheus.io/port')}, the metrics "
             f"port is {metrics_port}")
        c.ok(ann.get("prometheus.io/path", "/metrics") == "/metrics", where,
             "prometheus.io/path should be /metrics")

        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            p = ct.get(probe)
            if p is None:
                c.ok(probe == "startupProbe", where, f"no {probe}")
                continue
            c.ok("grpc" in p, where, f"{probe} is not a native gRPC probe (grpc: {{port: ...}})")
            if "grpc" in p:
                c.ok(p["grpc"].get("port") == grpc_port, where,
                     f"{probe} probes port {p['grpc'].get('port')}, the gRPC port is {grpc_port}")

        drain = parse_duration(env.get("SAGA_DRAIN_TIMEOUT", {}).get("value", sagad_drain_default))
        grace = pod.get("terminationGracePeriodSeconds", 30)
        if c.ok(drain is not None, where, "cannot read the drain timeout"):
            c.ok(grace >= drain + 10, where, f"terminationGracePeriodSeconds {grace} < drain "
                 f"timeout {drain:g}s + 10s: the kubelet would kill sagad while it drains")

        owner = env.get("SAGA_OWNER_ID", {})
        c.ok(((owner.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") ==
             "metadata.name", where, "SAGA_OWNER_ID is not the pod name (downward API "
             "fieldRef metadata.name)")
        check_security(c, where, pod, ct, 10001)

        # names and files: ConfigMaps / Secrets exist with the keys used, paths are mounted
        for v in pod.get("volumes", []) or []:
            if "configMap" in v:
                cm = find(objs, "ConfigMap", v["configMap"].get("name"))
                if c.ok(len(cm) == 1, where, f"volume {v['name']}: ConfigMap "
                        f"{v['configMap'].get('name')} is not in the manifests"):
                    for it in v["configMap"].get("items", []) or []:
                        c.ok(it["key"] in (cm[0].get("data") or {}), where,
                             f"ConfigMap {v['configMap']['name']} has no key {it['key']}")
            if "secret" in v:
                sec = find(objs, "Secret", v["secret"].get("secretName"))
                if c.ok(len(sec) == 1, where, f"volume {v['name']}: Secret "
                        f"{v['secret'].get('secretName')} is not in the manifests"):
                    keys = set((sec[0].get("data") or {})) | set((sec[0].get("stringData") or {}))
                    for it in v["secret"].get("items", []) or []:
                        c.ok(it["key"] in keys, where,
                             f"Secret {v['secret']['secretName']} has no key {it['key']}")
        for e in env.values():
            ref = e.get("valueFrom") or {}
            for kind, obj in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if obj in ref:
                    o = find(objs, kind, ref[obj]["name"])
                    if c.ok(len(o) == 1, where, f"env {e['name']}: {kind} {ref[obj]['name']} "
                            f"is not in the manifests"):
                        keys = set(o[0].get("data") or {}) | set(o[0].get("stringData") or {})
                        c.ok(ref[obj]["key"] in keys, where,
                             f"env {e['name']}: {kind} {ref[obj]['name']} has no key {ref[obj]['key']}")
        for ef in ct.get("envFrom", []) or []:
            for kind, obj in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if obj in ef:
                    c.ok(len(find(objs, kind, ef[obj]["name"])) == 1, where,
                         f"envFrom: {kind} {ef[obj]['name']} is not in the manifests")

        files = mounted_files(pod, ct, objs)
        c.ok("SAGA_DATABASE_URL_FILE" in env or "SAGA_DATABASE_URL" in env, where,
             "neither SAGA_DATABASE_URL_FILE nor SAGA_DATABASE_URL is set")
        if "SAGA_DATABASE_URL_FILE" in env:
            f = env["SAGA_DATABASE_URL_FILE"].get("value")
            c.ok(files.get(f, ("",))[0] == "secret", where,
                 f"SAGA_DATABASE_URL_FILE {f} is not a mounted Secret key")
        if "SAGA_DATABASE_URL" in env:
            c.ok("secretKeyRef" in (env["SAGA_DATABASE_URL"].get("valueFrom") or {}), where,
                 "SAGA_DATABASE_URL should come from a Secret (secretKeyRef)")
        defs_dir = env.get("SAGA_DEFINITIONS", {}).get("value")
        proto_dirs = (env.get("SAGA_PROTO_PATH", {}).get("value") or "").split(":")
        def_files = {p: v for p, v in files.items() if defs_dir and os.path.dirname(p) == defs_dir
                     and p.endswith((".yaml", ".yml", ".json"))}
        if c.ok(bool(def_files), where, f"no workflow file is mounted in SAGA_DEFINITIONS {defs_dir}"):
            for path, (kind, name, key) in def_files.items():
                cm = find(objs, "ConfigMap", name)
                if not cm or key is None:
                    continue
                text = cm[0]["data"][key]
                d_obj = yaml.safe_load(text) or {}
                for pname, p in (d_obj.get("participants") or {}).items():
                    for proto in p.get("protos", []) or []:
                        found = any(os.path.join(d, proto) in files for d in proto_dirs + [defs_dir] if d)
                        c.ok(found, where, f"{path}: participant {pname}'s {proto} is not mounted "
                             f"under SAGA_PROTO_PATH {':'.join(proto_dirs)}")
                # the copy of saga-defs/<key>
                original = os.path.join(root, "saga-defs", key)
                if c.ok(os.path.exists(original), c.rel(cm[0]["__file__"]),
                        f"key {key} has no original saga-defs/{key}"):
                    part_svc = f"shop-participants.{NAMESPACE}.svc.cluster.local:{PARTICIPANTS_PORT}"
                    compare_definition(c, f"{c.rel(cm[0]['__file__'])} [{key}]", text, original,
                                       part_svc)
        for cm in find(objs, "ConfigMap"):
            for key, text in (cm.get("data") or {}).items():
                if key.endswith(".proto"):
                    src = glob.glob(os.path.join(root, "examples", "participants", "proto", "**", key),
                                    recursive=True)
                    if c.ok(len(src) == 1, c.rel(cm["__file__"]), f"key {key}: no single "
                            f"examples/participants/proto/**/{key} to compare with"):
                        with open(src[0], encoding="utf-8") as f:
                            c.ok(f.read() == text, c.rel(cm["__file__"]), f"key {key} differs from "
                                 f"{c.rel(src[0])}: run deploy/gen-defs.sh")

        # the Service
        svcs = service_for(d)
        if c.ok(len(svcs) == 1, where, "expected one Service selecting the sagad pods"):
            s = svcs[0]
            sw = c.rel(s["__file__"])
            c.ok(s["spec"].get("type", "ClusterIP") == "ClusterIP", sw, "sagad Service is not ClusterIP")
            ports = {p.get("name"): p for p in s["spec"].get("ports", [])}
            for name, want in (("grpc", grpc_port), ("metrics", metrics_port)):
                p = ports.get(name)
                if c.ok(p is not None, sw, f"no port named {name}"):
                    c.ok(container_port(ct, p.get("targetPort", p.get("port"))) == want, sw,
                         f"port {name}: targetPort {p.get('targetPort')} is not the container's "
                         f"{name} port {want}")
                    c.ok(p.get("port") == want, sw, f"port {name} is {p.get('port')}, expected {want}")
        # the PodDisruptionBudget
        pdbs = [p for p in find(objs, "PodDisruptionBudget") if
                (p["spec"].get("selector", {}).get("matchLabels", {}).items()
                 <= d["spec"]["template"]["metadata"]["labels"].items())]
        if c.ok(len(pdbs) == 1, where, "expected one PodDisruptionBudget selecting the sagad pods"):
            ma = pdbs[0]["spec"].get("minAvailable")
            c.ok(ma == 1, c.rel(pdbs[0]["__file__"]), f"minAvailable is {ma}, expected 1")
            c.ok(isinstance(ma, int) and ma < (spec.get("replicas") or 1),
                 c.rel(pdbs[0]["__file__"]), "minAvailable must be below replicas, or no node "
                 "can ever be drained")
        # no Job calling a migrate mode that sagad does not have
        for j in find(objs, "Job") + find(objs, "CronJob"):
            c.fail(c.rel(j["__file__"]), "a Job: sagad migrates at startup and has no "
                   "migrate-only mode (document it instead)")

    # the participants
    if c.ok(len(part_deps) == 1, c.rel(k8s_dir), "expected one Deployment of the shop-participants"):
        d = part_deps[0]
        where = c.rel(d["__file__"])
        pod = d["spec"]["template"]["spec"]
        ct = [x for x in pod["containers"] if "shop-participants" in str(x.get("image"))][0]
        c.ok((d["spec"].get("replicas") or 1) == 1, where, "the example participants keep their "
             "state in memory: run one replica")
        port = container_port(ct, "grpc")
        listen = arg_value((ct.get("command") or [])[1:] + (ct.get("args") or []), "--listen")
        c.ok(port == PARTICIPANTS_PORT, where, f"container port 'grpc' is {port}, expected "
             f"{PARTICIPANTS_PORT}")
        c.ok(port_of(listen) == port, where, f"--listen {listen} is not the container port {port}")
        c.ok(listen is not None and not listen.startswith(("localhost", "127.")), where,
             f"--listen {listen} is loopback: the Service could not reach it")
        uses.append((where, [], flags_in(ct.get("args") or []), "shop-participants"))
        for probe in ("livenessProbe", "readinessProbe"):
            p = ct.get(probe) or {}
            got = (p.get("tcpSocket") or p.get("grpc") or {}).get("port")
            c.ok(got in (port, "grpc"), where, f"{probe} checks port {got}, the port is {port}")
        check_security(c, where, pod, ct, 10001)
        svcs = service_for(d)
        if c.ok(len(svcs) == 1, where, "expected one Service selecting the participants"):
            s = svcs[0]
            c.ok(s["metadata"]["name"] == "shop-participants", c.rel(s["__file__"]),
                 "the definitions reach the participants as shop-participants.saga.svc...: the "
                 f"Service is named {s['metadata']['name']}")
            sp = s["spec"]["ports"][0]
            c.ok(sp.get("port") == PARTICIPANTS_PORT and
                 container_port(ct, sp.get("targetPort", sp.get("port"))) == port,
                 c.rel(s["__file__"]), f"port {sp.get('port')} -> {sp.get('targetPort')} does not "
                 f"lead to the participants' port {port}")
    return uses


# ---------------------------------------------------------------------------------------------
# compose


def check_compose(c, root, deploy, sagad_drain_default, docker_info):
    path = os.path.join(deploy, "compose.yaml")
    where = c.rel(path)
    docs = load_yaml_docs(c, path) if c.ok(os.path.exists(path), where, "missing") else []
    uses = []
    if not docs:
        return uses
    comp = docs[0]
    svcs = comp.get("services", {}) or {}
    for name in ("postgres", "participants", "sagad"):
        c.ok(name in svcs, where, f"no service {name}")
    if not all(n in svcs for n in ("postgres", "participants", "sagad")):
        return uses
    pg, part, sagad = svcs["postgres"], svcs["participants"], svcs["sagad"]

    c.ok(str(pg.get("image", "")).startswith("postgres:15"), where, "postgres is not postgres:15")
    c.ok("pg_isready" in " ".join(map(str, (pg.get("healthcheck") or {}).get("test", []))), where,
         "postgres has no pg_isready health check")
    vols = [str(v).split(":")[0] for v in pg.get("volumes", []) or []]
    c.ok(any(v in (comp.get("volumes") or {}) for v in vols), where,
         "postgres does not keep its data in a named volume")
    dep = sagad.get("depends_on") or {}
    c.ok(isinstance(dep, dict) and (dep.get("postgres") or {}).get("condition") == "service_healthy",
         where, "sagad does not depend on postgres being service_healthy")

    env = env_list_to_dict(sagad.get("environment"))
    uses.append((where + " [sagad]", list(env), flags_in(sagad.get("command") or [])))
    c.ok(env.get("SAGA_DEFINITIONS") == "/etc/saga/saga-defs", where,
         "sagad: SAGA_DEFINITIONS is not /etc/saga/saga-defs")
    c.ok(env.get("SAGA_PROTO_PATH") == "/etc/saga/protos", where,
         "sagad: SAGA_PROTO_PATH is not /etc/saga/protos")
    c.ok("SAGA_DATABASE_URL" in env or "SAGA_DATABASE_URL_FILE" in env, where,
         "sagad: no SAGA_DATABASE_URL / SAGA_DATABASE_URL_FILE")

    # ports: all published on loopback; sagad's listen / metrics / health check agree
    for sname, s in svcs.items():
        for host_ip, host_port, _ in compose_ports(s):
            c.ok(host_ip == "127.0.0.1", where, f"{sname} publishes port {host_port} on "
                 f"{host_ip or 'every interface'}, not 127.0.0.1")
    listen_port = port_of(env.get("SAGA_LISTEN", f"0.0.0.0:{SAGAD_GRPC_PORT}"))
    targets = {t for _, _, t in compose_ports(sagad)}
    c.ok(listen_port == SAGAD_GRPC_PORT, where, f"sagad listens on {listen_port}, expected "
         f"{SAGAD_GRPC_PORT}")
    c.ok(listen_port in targets, where, f"sagad's gRPC port {listen_port} is not published")
    mport = port_of(env.get("SAGA_METRICS_LISTEN"))
    c.ok(mport == METRICS_PORT and mport in targets, where,
         f"sagad's metrics port ({env.get('SAGA_METRICS_LISTEN')}) is not {METRICS_PORT} or not published")
    hc = (sagad.get("healthcheck") or {}).get("test", [])
    hc = hc if isinstance(hc, list) else str(hc).split()
    c.ok("sagactl" in hc and "health" in hc, where, "sagad's health check does not run sagactl health")
    c.ok(port_of(arg_value(hc, "--address")) == listen_port, where,
         f"sagad's health check dials {arg_value(hc, '--address')}, sagad listens on {listen_port}")
    uses.append((where + " [sagad healthcheck]", [], flags_in(hc), "sagactl"))
    if docker_info.get("healthcheck_cmd"):
        c.ok(port_of(arg_value(docker_info["healthcheck_cmd"], "--address")) == listen_port,
             where, "the Dockerfile's HEALTHCHECK and compose's listen port disagree")

    drain = parse_duration(env.get("SAGA_DRAIN_TIMEOUT", sagad_drain_default))
    grace = parse_duration(sagad.get("stop_grace_period", "10s"))
    if c.ok(drain is not None and grace is not None, where, "cannot read drain timeout / "
            "stop_grace_period"):
        c.ok(grace >= drain + 10, where, f"sagad stop_grace_period {grace:g}s < drain timeout "
             f"{drain:g}s + 10s")

    # the compose definitions, mounted over /etc/saga/saga-defs
    mounts = {}
    for v in sagad.get("volumes", []) or []:
        if isinstance(v, str):
            src, _, rest = v.partition(":")
            mounts[rest.split(":")[0]] = src
        else:
            mounts[v.get("target")] = v.get("source")
    src = mounts.get(env.get("SAGA_DEFINITIONS"))
    if c.ok(src is not None, where, "sagad: no folder is mounted at SAGA_DEFINITIONS"):
        defs_dir = os.path.normpath(os.path.join(deploy, src))
        part_args = part.get("command") or []
        plisten = arg_value(part_args, "--listen")
        uses.append((where + " [participants]", [], flags_in(part_args), "shop-participants"))
        c.ok(plisten is not None and not plisten.startswith(("localhost", "127.")), where,
             f"participants --listen {plisten}: loopback is unreachable from sagad's container")
        ptarget = f"participants:{port_of(plisten)}"
        c.ok(port_of(plisten) == PARTICIPANTS_PORT, where, f"participants listen on "
             f"{port_of(plisten)}, expected {PARTICIPANTS_PORT}")
        originals = sorted(glob.glob(os.path.join(root, "saga-defs", "*.y*ml")) +
                           glob.glob(os.path.join(root, "saga-defs", "*.json")))
        for o in originals:
            copy = os.path.join(defs_dir, os.path.basename(o))
            if c.ok(os.path.exists(copy), c.rel(defs_dir), f"no copy of {c.rel(o)} (the mount "
                    f"hides the image's saga-defs): run deploy/gen-defs.sh"):
                with open(copy, encoding="utf-8") as f:
                    compare_definition(c, c.rel(copy), f.read(), o, ptarget)
        for f in glob.glob(os.path.join(defs_dir, "*")):
            c.ok(os.path.exists(os.path.join(root, "saga-defs", os.path.basename(f))), c.rel(f),
                 "has no original in saga-defs/")

    # .env.example defines every variable that compose requires
    env_example = os.path.join(deploy, ".env.example")
    with open(path, encoding="utf-8") as f:
        required = set(re.findall(r"\$\{(\w+):\?", f.read()))
    if c.ok(os.path.exists(env_example), c.rel(env_example), "missing"):
        with open(env_example, encoding="utf-8") as f:
            keys = set(re.findall(r"^(\w+)=", f.read(), re.M))
        for r in sorted(required - keys):
            c.fail(c.rel(env_example), f"does not set {r}, which compose.yaml requires")
        uses.append((c.rel(env_example), sorted(k for k in keys if k.startswith("SAGA_")), []))
    return uses


# ---------------------------------------------------------------------------------------------
# flags and variables against the binaries' --help


def check_flags(c, uses, bins, docker_env):
    helps = {}
    for name, path in bins.items():
        if path and os.path.exists(path):
            try:
                helps[name] = help_of(path)
            except (OSError, subprocess.SubprocessError) as e:
                c.fail(path, f"cannot run --help: {e}")
        elif path:
            c.fail(path, f"{name} not found")
    if "sagad" not in helps:
        if c.strict:
            c.fail("check_deploy", "--strict needs --sagad PATH to check the flags")
        else:
            c.warn("check_deploy", "no --sagad: the flags and SAGA_* variables are not checked")
        return None
    flags, envs, defaults = helps["sagad"]
    c.ok("SAGA_LISTEN" in envs, "sagad --help", "does not list (Env:SAGA_LISTEN): is it a CLI11 "
         "--help?")
    c.ok(port_of(defaults.get("--listen")) == SAGAD_GRPC_PORT, "sagad --help",
         f"the default --listen is {defaults.get('--listen')}, the manifests use port "
         f"{SAGAD_GRPC_PORT}")
    all_uses = list(uses) + [("deploy/Dockerfile [ENV]", list(docker_env), [])]
    missing = {}
    for u in all_uses:
        where, names, used_flags = u[0], u[1], u[2]
        binary = u[3] if len(u) > 3 else "sagad"
        if binary not in helps:
            c.note(f"{where}: {binary} flags not checked (pass --{binary} PATH)")
            continue
        bflags, benvs, _ = helps[binary]
        for n in names:
            if n.startswith("SAGA_") and binary == "sagad" and n not in benvs:
                missing.setdefault(n, set()).add(where)
            elif n.startswith("SAGA_") or binary != "sagad":
                c.passed += 1
        for fl in used_flags:
            if fl not in bflags:
                missing.setdefault(fl if binary == "sagad" else f"{binary} {fl}", set()).add(where)
            else:
                c.passed += 1
    for item, wheres in sorted(missing.items()):
        msg = f"{item} is not in `--help` of the binary (used in {', '.join(sorted(wheres))})"
        if item in PENDING_FLAGS:
            c.note(f"pending: {msg}; allowed by PENDING_FLAGS")
        elif c.strict:
            c.fail(sorted(wheres)[0], msg)
        else:
            c.warn(sorted(wheres)[0], msg + " (a failure with --strict)")
    for p in sorted(PENDING_FLAGS):
        if p in flags or p in envs:
            c.note(f"{p} has landed in sagad: remove it from PENDING_FLAGS in {__file__}")
    return defaults


# ---------------------------------------------------------------------------------------------
# tools that validate further, when present and working


def check_tools(c, root, deploy):
    kubectl = shutil.which("kubectl")
    if kubectl:
        try:
            r = subprocess.run([kubectl, "kustomize", os.path.join(deploy, "k8s")],
                               capture_output=True, text=True, timeout=120)
            if c.ok(r.returncode == 0, "deploy/k8s", f"`kubectl kustomize` fails: {r.stderr.strip()}"):
                kinds = [d.get("kind") for d in yaml.safe_load_all(r.stdout) if d]
                c.ok(kinds.count("Deployment") == 2, "deploy/k8s",
                     f"`kubectl kustomize` renders {kinds.count('Deployment')} Deployments, expected 2")
        except subprocess.TimeoutExpired:
            c.note("kubectl kustomize timed out; skipped")
    else:
        c.note("kubectl not found: `kubectl kustomize deploy/k8s` not run")
    docker = shutil.which("docker")
    compose_ok = False
    if docker:
        r = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
        compose_ok = r.returncode == 0
    if compose_ok:
        env = dict(os.environ)
        with open(os.path.join(deploy, ".env.example"), encoding="utf-8") as f:
            for k, v in re.findall(r"^(\w+)=(.*)$", f.read(), re.M):
                env.setdefault(k, v)
        r = subprocess.run([docker, "compose", "-f", os.path.join(deploy, "compose.yaml"),
                            "config", "-q"], capture_output=True, text=True, timeout=60, env=env)
        c.ok(r.returncode == 0, "deploy/compose.yaml", f"`docker compose config` fails: "
             f"{r.stderr.strip()}")
    else:
        c.note("docker compose not available: `docker compose config` not run")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=os.path.normpath(os.path.join(here, "..", "..")),
                    help="the repository (default: two folders up)")
    ap.add_argument("--sagad", help="the built sagad, whose --help lists the flags")
    ap.add_argument("--sagactl", help="the built sagactl (checks the health checks' flags)")
    ap.add_argument("--shop-participants", help="the built shop-participants")
    ap.add_argument("--strict", action="store_true",
                    help="flags/variables missing from --help (and not in PENDING_FLAGS) fail")
    a = ap.parse_args()

    root = os.path.abspath(a.root)
    deploy = os.path.join(root, "deploy")
    c = Checker(root, a.strict)
    if not os.path.isdir(deploy):
        print(f"FAIL {deploy}: missing")
        return 1
    bins = {"sagad": a.sagad, "sagactl": a.sagactl, "shop-participants": a.shop_participants}
    # Without explicit paths, the siblings of sagad in a CMake build tree.
    if a.sagad:
        build = os.path.normpath(os.path.join(os.path.dirname(a.sagad), "..", ".."))
        for name, rel in (("sagactl", "orchestrator/cli/sagactl"),
                          ("shop-participants", "examples/participants/shop-participants")):
            if not bins[name] and os.path.exists(os.path.join(build, rel)):
                bins[name] = os.path.join(build, rel)

    # every YAML under deploy/ parses
    for path in sorted(glob.glob(os.path.join(deploy, "**", "*.y*ml"), recursive=True) +
                       glob.glob(os.path.join(deploy, "**", ".*.y*ml"), recursive=True)):
        load_yaml_docs(c, path)

    # sagad's defaults come from its --help when available
    drain_default = "20s"
    docker_info = check_dockerfile(c, os.path.join(deploy, "Dockerfile"), bins)
    uses = []
    uses += check_compose(c, root, deploy, drain_default, docker_info)
    uses += check_k8s(c, root, os.path.join(deploy, "k8s"), drain_default)
    defaults = check_flags(c, uses, bins, [k for k in docker_info.get("env", {}) if k.startswith("SAGA_")])
    if defaults and defaults.get("--drain-timeout") and defaults["--drain-timeout"] != drain_default:
        c.fail("check_deploy", f"sagad's default drain timeout is now {defaults['--drain-timeout']}"
               f", the checks assumed {drain_default}: set SAGA_DRAIN_TIMEOUT explicitly")
    check_tools(c, root, deploy)
    for must in ("README.md", "run-local.sh", "Dockerfile.dockerignore", ".env.example", "gen-defs.sh"):
        c.ok(os.path.exists(os.path.join(deploy, must)), f"deploy/{must}", "missing")
    for script in ("run-local.sh", "gen-defs.sh"):
        p = os.path.join(deploy, script)
        if os.path.exists(p):
            c.ok(os.access(p, os.X_OK), f"deploy/{script}", "is not executable")

    print(f"check_deploy: {c.passed} passed, {len(c.failures)} failed")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
