"""The README's Python examples run as written (in a scratch directory)."""

import os
import re
import subprocess
import sys

from twisted.trial import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def examples() -> list[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL)


class ReadmeExampleTests(unittest.TestCase):
    timeout = 120

    def test_examples_run(self) -> None:
        blocks = examples()
        self.assertGreaterEqual(len(blocks), 2)
        for i, code in enumerate(blocks):
            if "task.react" not in code:  # a fragment: run it through task.react
                code += "\nfrom twisted.internet import defer, task\n"
                code += "task.react(lambda r: defer.ensureDeferred(main(r)))\n"
            scratch = self.mktemp()
            os.makedirs(scratch)
            env = dict(os.environ, PYTHONPATH=ROOT)
            done = subprocess.run([sys.executable, "-c", code], cwd=scratch, env=env,
                                  capture_output=True, text=True, timeout=90)
            self.assertEqual(done.returncode, 0, f"example {i}:\n{done.stderr}")
            self.assertTrue(done.stdout.strip(), f"example {i} printed nothing")
