"""contract.py - the consumer contract checks under node: npm packages and captures.

tests/contract/package.json and package-lock.json pin the AsyncAPI parser, the CloudEvents
SDK and ajv. install() puts them into <build>/npm-contract with `npm ci` (once per lock
file: a stamp holds the lock's SHA-256; a file lock keeps two tests from installing at
once). node_or_skip() ends the test with SKIP and exit 77 when node or npm cannot run at
all; anything else that fails (npm ci, a script) fails the test.

A capture is one message seen on a broker, as one JSON object per line, the format the
scripts in tests/contract read:
  transport  "mqtt" | "kafka"          topic      the MQTT topic or Kafka topic
  payload    text, or null (a Kafka null value)
  json       the payload is JSON (else a string, e.g. the MQTT status)
  event      it should be a CloudEvent; kind says what it is otherwise
  mqtt:      retained, content_type (the MQTT 5 property, null when absent)
  kafka:     key, headers {name: value}, mode "structured" | "binary"
  reply_of   an AsyncAPI operation id when the topic is a command's Response Topic
"""
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys

from . import util

CONTRACT_DIR = os.path.join(util.SOURCE_DIR, "tests", "contract")
NODE = shutil.which("node") or shutil.which("nodejs")
NPM = shutil.which("npm")


def _runs(argv):
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def node_or_skip(what):
    """Exits 77 with a SKIP line naming what is not checked, when node or npm cannot run."""
    for name, exe, pkg in (("node", NODE, "nodejs"), ("npm", NPM, "npm")):
        if exe is None or not _runs([exe, "--version"]):
            print("SKIP %s (Debian package %s) cannot run: %s is not checked" % (name, pkg, what))
            sys.stdout.flush()
            sys.exit(77)


def build_dir():
    return os.environ.get("QB_BUILD_DIR") or os.path.join(util.SOURCE_DIR, "build")


def install():
    """npm ci of tests/contract into <build>/npm-contract unless that lock is installed;
    returns the node_modules path. Raises RuntimeError with npm's output on failure."""
    dest = os.path.join(build_dir(), "npm-contract")
    os.makedirs(dest, exist_ok=True)
    with open(os.path.join(CONTRACT_DIR, "package-lock.json"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    stamp = os.path.join(dest, "installed.sha256")
    with open(os.path.join(dest, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with open(stamp) as f:
                if f.read().strip() == digest:
                    return os.path.join(dest, "node_modules")
        except FileNotFoundError:
            pass
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(os.path.join(CONTRACT_DIR, name), os.path.join(dest, name))
        # --ignore-scripts: nothing of these packages runs at install time
        r = subprocess.run([NPM, "ci", "--prefix", dest, "--ignore-scripts", "--no-audit",
                            "--no-fund"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=600)
        if r.returncode != 0:
            raise RuntimeError("npm ci --prefix %s exited %d:\n%s"
                               % (dest, r.returncode, r.stdout.decode("utf-8", "replace")[-3000:]))
        with open(stamp, "w") as f:
            f.write(digest + "\n")
    return os.path.join(dest, "node_modules")


def run(node_modules, script, *args):
    """Runs tests/contract/<script> under node; returns (exit status, output text)."""
    r = subprocess.run([NODE, os.path.join(CONTRACT_DIR, script)] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300,
                       env=dict(os.environ, NODE_PATH=node_modules))
    return r.returncode, r.stdout.decode("utf-8", "replace")


def report(t, label, rc, out):
    """Prints a script's findings and checks in test t that it found nothing wrong; returns
    the summary object of its last line."""
    lines = out.rstrip("\n").splitlines()
    for line in lines[:-1]:
        print("    " + line)
    try:
        summary = json.loads(lines[-1])
    except (IndexError, ValueError):
        summary = None
    fails = [l for l in lines if l.startswith("FAIL ")]
    t.expect(rc == 0 and summary is not None and summary.get("failures") == 0 and not fails,
             "%s: exit %d, no failure" % (label, rc), "\n".join(fails)[:3000] or out[-2000:])
    return summary


def write_captures(path, captures):
    with open(path, "w", encoding="utf-8") as f:
        for c in captures:
            f.write(json.dumps(c, ensure_ascii=False) + "\n")
    return path
