#!/usr/bin/python3
"""tools/check-thread-safety accepts correctly locked code and rejects an unlocked access.

Usage: check_thread_safety_test.py <source dir>. The two fixtures under fixtures/ are the same
class, once with every guarded access under its mutex and once with one read outside it. Exits
77 (skipped) when clang++ is not installed.
"""

import os
import shutil
import subprocess
import sys
import unittest

SOURCE_DIR = os.path.abspath(sys.argv.pop(1) if len(sys.argv) > 1 else ".")
CHECK = os.path.join(SOURCE_DIR, "tools", "check-thread-safety")
FIXTURES = os.path.join(SOURCE_DIR, "tests", "tools", "fixtures")


def check(name):
    r = subprocess.run([CHECK, "--files", os.path.join(FIXTURES, name)], capture_output=True,
                       text=True)
    return r.returncode, r.stdout + r.stderr


class CheckThreadSafetyTest(unittest.TestCase):
    def test_locked_accesses_pass(self):
        rc, out = check("thread_safety_ok.cc")
        self.assertEqual(rc, 0, out)

    def test_unlocked_read_of_guarded_member_fails(self):
        rc, out = check("thread_safety_violation.cc")
        self.assertEqual(rc, 1, out)
        self.assertIn("reading variable 'items_' requires holding mutex 'mu_'", out)


if __name__ == "__main__":
    if not shutil.which("clang++"):
        print("clang++ not installed: skipped")
        sys.exit(77)
    unittest.main()
