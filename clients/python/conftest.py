"""pytest setup of the Python caller's tests: fresh stubs, and one live `o2o-sidecar dev`
(sidecar + DOKU simulator) on free ports for the whole session.

The sidecar binary is $O2O_SIDECAR_BIN, else target/debug/o2o-sidecar of this repository
(build it with `cargo build --bin o2o-sidecar`).
"""

import os
import pathlib
import queue
import re
import subprocess
import sys
import tempfile
import threading

import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import generate_stubs  # noqa: E402

generate_stubs.generate()

# How long the sidecar may take to print that it is serving.
START_TIMEOUT_S = 30.0


class DevSidecar:
    """`o2o-sidecar dev` on port 0 with its store in a temporary directory."""

    def __init__(self, binary: pathlib.Path, workdir: str):
        self.lines: "queue.Queue[tuple[str, str]]" = queue.Queue()
        self.proc = subprocess.Popen(
            [
                str(binary), "dev",
                "--grpc-addr", "127.0.0.1:0",
                "--http-addr", "127.0.0.1:0",
                "--admin-addr", "127.0.0.1:0",
                "--sim-addr", "127.0.0.1:0",
                "--store", f"sqlite://{workdir}/o2o.db",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.output: list[str] = []
        # Drain both pipes for the sidecar's whole life so it never blocks on a full pipe.
        for name, pipe in (("stdout", self.proc.stdout), ("stderr", self.proc.stderr)):
            threading.Thread(target=self._drain, args=(name, pipe), daemon=True).start()
        self.grpc_addr, self.sim_url = self._wait_until_serving()

    def _drain(self, name, pipe):
        for line in pipe:
            self.output.append(line)
            self.lines.put((name, line))
        self.lines.put((name, None))

    def _wait_until_serving(self):
        sim_url = grpc_addr = None
        closed = 0
        while grpc_addr is None or sim_url is None:
            try:
                name, line = self.lines.get(timeout=START_TIMEOUT_S)
            except queue.Empty:
                self.stop()
                raise RuntimeError("o2o-sidecar dev did not start:\n" + "".join(self.output))
            if line is None:
                closed += 1
                if closed == 2:
                    raise RuntimeError("o2o-sidecar dev exited:\n" + "".join(self.output))
                continue
            # Banner (stdout): "  DOKU simulator             http://127.0.0.1:35437   (GET …)"
            m = re.search(r"DOKU simulator\s+(http://\S+)", line)
            if name == "stdout" and m:
                sim_url = m.group(1)
            # Log (stderr): "o2o-sidecar serving grpc_addr=127.0.0.1:44169 http_addr=… …"
            m = re.search(r"o2o-sidecar serving grpc_addr=(\S+)", line)
            if name == "stderr" and m:
                grpc_addr = m.group(1)
        return grpc_addr, sim_url

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def sidecar():
    binary = pathlib.Path(os.environ.get("O2O_SIDECAR_BIN", REPO / "target/debug/o2o-sidecar"))
    if not binary.exists():
        pytest.fail(f"{binary} not found: run `cargo build --bin o2o-sidecar` first")
    with tempfile.TemporaryDirectory(prefix="o2o-py-") as workdir:
        dev = DevSidecar(binary, workdir)
        try:
            yield dev
        finally:
            dev.stop()
