"""Turn trial's closing line into the plain ``N passed, N failed`` line CI reads."""

import re
import sys


def main(path: str, rc: int) -> None:
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    closing = re.findall(r"^(PASSED|FAILED) \((.*)\)\s*$", text, re.MULTILINE)
    counts = {"successes": 0, "failures": 0, "errors": 0, "skips": 0,
              "expectedFailures": 0, "unexpectedSuccesses": 0}
    if closing:
        for part in closing[-1][1].split(","):
            name, _, value = part.strip().partition("=")
            if name in counts:
                counts[name] = int(value)
    failed = counts["failures"] + counts["errors"] + counts["unexpectedSuccesses"]
    if rc != 0 and failed == 0:
        failed = 1  # the runner itself failed (import error, crash): never report green
    line = f"{counts['successes'] + counts['expectedFailures']} passed, {failed} failed"
    if counts["skips"]:
        line += f", {counts['skips']} skipped"
    print(line)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
