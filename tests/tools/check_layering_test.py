#!/usr/bin/python3
"""tools/check-layering passes on the repository and fails on each kind of violation.

Usage: check_layering_test.py <source dir>. Each case writes a small fixture tree (the
repository's folder layout with a few files) into a temporary directory and runs the check on it.
"""

import os
import subprocess
import sys
import tempfile
import unittest

SOURCE_DIR = os.path.abspath(sys.argv.pop(1) if len(sys.argv) > 1 else ".")
CHECK = os.path.join(SOURCE_DIR, "tools", "check-layering")

# A tree that obeys every rule: each file includes what its layer may.
CLEAN = {
    "services/common/status.h": "#pragma once\n",
    "services/common/logging.h": '#pragma once\n#include "services/common/status.h"\n',
    "services/common/server.h": '#pragma once\n#include "services/common/status.h"\n',
    "services/engine/model.h": '#pragma once\n#include "kernels/cpu/ops.h"\n',
    "kernels/cpu/ops.h": '#pragma once\n#include "services/common/status.h"\n',
    "index/flat.h": '#pragma once\n#include "kernels/cpu/ops.h"\n'
                    '#include "services/common/logging.h"\n',
    "services/index/collection.h": '#pragma once\n#include "index/flat.h"\n',
    "services/kvr/kv_store.h": '#pragma once\n#include "index/flat.h"\n',
    "services/kvr/service.h": '#pragma once\n#include "services/kvr/kv_store.h"\n',
    "services/kvr/kvr_client_grpc.h": '#pragma once\n#include "services/kvr/kv_store.h"\n',
    "services/kvr/kvr_client_grpc.cc": '#include "services/kvr/kvr_client_grpc.h"\n',
    "services/kvr/service.cc": '#include "services/kvr/service.h"\n'
                               '#include "services/common/server.h"\n',
    "services/ctxcache/ape_encoder.h": '#pragma once\n#include "services/engine/model.h"\n',
    "services/decoder/generator.cc": '#include "services/kvr/kvr_client_grpc.h"\n'
                                     '#include "services/ctxcache/ape_encoder.h"\n',
    "services/router/router_service.cc": '#include "services/common/server.h"\n',
    "tests/kvr/service_test.cc": '#include "services/kvr/service.h"\n',
}


def run_check(files):
    with tempfile.TemporaryDirectory() as root:
        for path, text in files.items():
            os.makedirs(os.path.join(root, os.path.dirname(path)), exist_ok=True)
            with open(os.path.join(root, path), "w") as f:
                f.write(text)
        r = subprocess.run([CHECK, "--root", root], capture_output=True, text=True)
        return r.returncode, r.stdout + r.stderr


class CheckLayeringTest(unittest.TestCase):
    def assertRejected(self, path, text, reason):
        rc, out = run_check({**CLEAN, path: text})
        self.assertEqual(rc, 1, out)
        self.assertIn(path, out)
        self.assertIn(reason, out)

    def test_repository_passes(self):
        r = subprocess.run([CHECK], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_clean_fixture_passes(self):
        rc, out = run_check(CLEAN)
        self.assertEqual(rc, 0, out)

    def test_kernels_including_a_service_fails(self):
        self.assertRejected("kernels/cpu/attention.cc", '#include "services/engine/model.h"\n',
                            "may include only the base headers")

    def test_index_including_a_non_base_common_header_fails(self):
        self.assertRejected("index/hnsw.cc", '#include "services/common/server.h"\n',
                            "may include only the base headers")

    def test_kernels_including_index_fails(self):
        self.assertRejected("kernels/cpu/ops.cc", '#include "index/flat.h"\n', "below index/")

    def test_service_including_another_services_internal_header_fails(self):
        self.assertRejected("services/decoder/generator.cc", '#include "services/kvr/service.h"\n',
                            "internal to services/kvr")

    def test_service_depending_on_an_undeclared_service_fails(self):
        self.assertRejected("services/router/worker_pool.cc",
                            '#include "services/ctxcache/ape_encoder.h"\n',
                            "may not depend on services/ctxcache")

    def test_client_including_its_server_header_fails(self):
        self.assertRejected("services/kvr/kvr_client_grpc.h",
                            '#pragma once\n#include "services/kvr/service.h"\n',
                            "public surface of services/kvr includes its internal header")

    def test_source_of_a_public_header_including_an_internal_header_fails(self):
        self.assertRejected("services/kvr/kv_store.cc",
                            '#include "services/kvr/kv_store.h"\n'
                            '#include "services/kvr/service.h"\n',
                            "public surface of services/kvr includes its internal header")

    def test_relative_include_is_resolved(self):
        self.assertRejected("index/ivf.cc", '#include "../services/engine/model.h"\n',
                            "may include only the base headers")

    def test_production_code_including_tests_fails(self):
        self.assertRejected("services/kvr/kv_store.cc", '#include "tests/support/process.h"\n',
                            "production code includes tests/")

    def test_new_service_folder_needs_a_deps_entry(self):
        rc, out = run_check({**CLEAN, "services/newsvc/x.cc": ""})
        self.assertEqual(rc, 1, out)
        self.assertIn("services/newsvc: new folder, give it a DEPS entry", out)


if __name__ == "__main__":
    unittest.main()
