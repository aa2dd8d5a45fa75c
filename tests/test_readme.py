"""The Python examples of the README and of docs/ run as written (in a scratch directory)."""

import os
import re
import subprocess
import sys

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def documents() -> list[str]:
    docs = os.path.join(ROOT, "docs")
    names = sorted(n for n in os.listdir(docs) if n.endswith(".md")) if os.path.isdir(docs) else []
    return [os.path.join(ROOT, "README.md")] + [os.path.join(docs, n) for n in names]


def examples(path: str = os.path.join(ROOT, "README.md")) -> list[str]:
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


class ReadmeExampleTests(unittest.TestCase):
    timeout = 600

    def test_examples_run(self) -> None:
        self.assertGreaterEqual(len(examples()), 2)
        for path in documents():
            self._run_examples(path)

    def _run_examples(self, path: str) -> None:
        name = os.path.relpath(path, ROOT)
        for i, code in enumerate(examples(path)):
            if "task.react" not in code:  # a fragment: run it through task.react
                code += "\nfrom twisted.internet import defer, task\n"
                code += "task.react(lambda r: defer.ensureDeferred(main(r)))\n"
            scratch = self.mktemp()
            os.makedirs(scratch)
            env = dict(os.environ, PYTHONPATH=ROOT)
            done = subprocess.run([sys.executable, "-c", code], cwd=scratch, env=env,
                                  capture_output=True, text=True, timeout=90)
            self.assertEqual(done.returncode, 0, f"{name} example {i}:\n{done.stderr}")
            self.assertTrue(done.stdout.strip(), f"{name} example {i} printed nothing")
