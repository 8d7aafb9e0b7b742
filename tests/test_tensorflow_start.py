"""TensorFlow's start-up messages in a `vae-tf` process (vae_tf_cli.tensorflow_start): TensorFlow
2.21 writes them through Abseil before Abseil is set up, which ignores TF_CPP_MIN_LOG_LEVEL; the
program applies the level to them itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ABSEIL_RECORD
from vae_tf_cli.tensorflow_start import min_log_level, stderr_filtered, tensorflow_start_lines

ROOT = Path(__file__).resolve().parents[1]

# What `TF_CPP_MIN_LOG_LEVEL=2 python -c "import tensorflow as tf; tf.config.list_physical_devices()"`
# wrote to stderr with TensorFlow 2.21.0 on a 2-CPU machine without a GPU (2026-12-05), plus a
# Python warning between the records.
NOTE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
ONEDNN = ("I0000 00:00:1796515096.980271   18083 port.cc:153] oneDNN custom operations are on. You may see slightly "
          "different numerical results due to floating-point round-off errors from different computation orders. "
          "To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n")
NO_DRIVER = ("I0000 00:00:1796515096.980905   18083 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
             "GPU will not be used.\n")
CPU_FEATURES = ("I0000 00:00:1796515097.080215   18083 cpu_feature_guard.cc:227] This TensorFlow binary is optimized "
                "to use available CPU instructions in performance-critical operations.\n"
                "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, "
                "rebuild TensorFlow with the appropriate compiler flags.\n")
PY_WARNING = "/x/y.py:3: DeprecationWarning: something Python said\n  import thing\n"
CUINIT = ("E0000 00:00:1796515100.274620   18083 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
          "Failed call to cuInit: UNKNOWN ERROR (303)\n")
WARNING = "W0000 00:00:1796515100.300000   18083 some_op.cc:7] a warning\n"
START = NOTE + ONEDNN + NO_DRIVER + CPU_FEATURES + PY_WARNING + NOTE + ONEDNN + NO_DRIVER + CUINIT + WARNING


def test_the_level_is_applied_as_tensorflow_documents_it():
    assert tensorflow_start_lines(START, 0) == START  # everything, as TensorFlow 2.21 prints it now
    # Level 1 drops the INFO records, a record's second line with it, and Abseil's note about them;
    # the Python warning (not an Abseil record) stays where it was.
    assert tensorflow_start_lines(START, 1) == PY_WARNING + WARNING
    assert tensorflow_start_lines(START, 2) == PY_WARNING  # what `vae-tf` sets
    assert tensorflow_start_lines(START, 3) == PY_WARNING


def test_a_failed_cuinit_is_shown_where_the_machine_has_a_cuda_driver():
    """The failed cuInit only says "no NVIDIA driver" when cudart_stub said so; with a driver it is
    why the GPU is not used, an error shown at levels below 3."""
    with_driver = NOTE + ONEDNN + CUINIT
    assert tensorflow_start_lines(with_driver, 2) == CUINIT
    assert tensorflow_start_lines(with_driver, 3) == ""
    assert tensorflow_start_lines(NOTE + NO_DRIVER + CUINIT, 2) == ""
    assert tensorflow_start_lines(NOTE + NO_DRIVER + CUINIT, 0) == NOTE + NO_DRIVER + CUINIT


def test_lines_that_are_not_abseil_records_are_kept_wherever_they_come():
    """Only a record TensorFlow breaks over two lines (cpu_feature_guard's) takes the next line
    with it; anything else after a dropped record is someone else's output and is kept."""
    others = ["WARNING:tensorflow:a Python logging record\n", "2026-12-06 00:01:02.345 E tensorflow/x.cc:1] old format\n",
              "A module that was compiled using NumPy 1.x cannot be run in NumPy 2.x\n", "ERROR: something\n",
              "  an indented line\n"]
    for other in others:
        assert tensorflow_start_lines(ONEDNN + other + NO_DRIVER, 2) == other
        assert tensorflow_start_lines(CPU_FEATURES + other, 2) == other


@pytest.mark.parametrize(("value", "level"), [(None, 0), ("2", 2), ("3", 3), ("x", 0), ("-1", 0), ("7", 3)])
def test_the_level_is_read_as_tensorflow_reads_it(value, level):
    assert min_log_level({} if value is None else {"TF_CPP_MIN_LOG_LEVEL": value}) == level


def test_what_is_written_to_descriptor_2_is_filtered_and_the_descriptor_restored(capfd):
    print("before", file=sys.stderr, flush=True)
    with stderr_filtered(2):
        os.write(2, START.encode())
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "before\n" + PY_WARNING + "after\n"


def test_at_level_0_nothing_is_redirected(capfd):
    with stderr_filtered(0):
        os.write(2, START.encode())
    assert capfd.readouterr().err == START


def test_a_process_that_dies_in_the_block_still_shows_what_was_kept():
    """The filter is a process of its own: a fatal record and then abort() (TensorFlow's way of
    dying, e.g. on a CPU without the instructions it was built for) still reach stderr."""
    fatal = "F0000 00:00:1796515100.1   18083 cpu_feature_guard.cc:1] The TensorFlow library was compiled to use AVX\n"
    program = ("import os\nfrom vae_tf_cli.tensorflow_start import stderr_filtered\n"
               "with stderr_filtered(2):\n"
               f"    os.write(2, {(NOTE + ONEDNN + fatal).encode()!r})\n"
               "    os.abort()\n")
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0
    assert done.stderr.endswith(fatal), done.stderr


def test_ctrl_c_in_the_block_prints_no_traceback_from_the_filter():
    """Ctrl-C goes to the whole process group, the filter process included: it printed its own
    KeyboardInterrupt traceback; it ignores it and still passes on what it keeps."""
    program = ("import os, signal, time\nfrom vae_tf_cli.tensorflow_start import stderr_filtered\n"
               # Python leaves SIGINT ignored when it starts ignored (a shell's background job, e.g.
               # `nohup make test &`): the test's own process would then not be interrupted either.
               "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
               "with stderr_filtered(2):\n"
               "    os.write(2, b'kept line\\n')\n"
               "    time.sleep(1.0)\n"  # the filter process has started and is reading
               "    os.killpg(os.getpgrp(), signal.SIGINT)\n"
               "    time.sleep(5)\n")
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    assert done.returncode != 0  # the program itself was interrupted
    assert "kept line" in done.stderr
    assert done.stderr.count("Traceback") == 1, done.stderr  # the program's own, not the filter's too


def test_an_exception_in_the_block_still_restores_descriptor_2_and_shows_what_was_kept(capfd):
    with pytest.raises(RuntimeError, match="boom"):
        with stderr_filtered(2):
            os.write(2, (NOTE + ONEDNN + PY_WARNING).encode())
            raise RuntimeError("boom")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == PY_WARNING + "after\n"


@pytest.mark.slow
def test_a_vae_tf_process_starts_tensorflow_without_its_abseil_chatter():
    """A `vae-tf` command that imports TensorFlow (`train --print-config` resolves the config) on this
    machine prints none of TensorFlow's start-up records, also after a library looked TensorFlow up
    without importing it; a plain `import tensorflow` at the same
    TF_CPP_MIN_LOG_LEVEL prints them (so the check is not vacuous), and the stderr of the program
    goes on working after the import."""
    env = {**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}, "PYTHONPATH": str(ROOT)}
    program = ("import importlib.util, os, sys, vae_tf_cli, vae_tf_cli.tensorflow_start\n"
               "os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'\n"  # what main sets, here before TensorFlow is imported
               "vae_tf_cli.tensorflow_start.quiet_tensorflow_start()\n"
               "assert importlib.util.find_spec('tensorflow') is not None\n"  # a library checking TensorFlow is there
               "import tensorflow\n"  # (`vae-tf serve` in tests/test_serving_store.py starts through main alone)
               "code = vae_tf_cli.main(['train', '--print-config'])\n"
               "print('tensorflow' in sys.modules, code)\n"
               "print('stderr still works', file=sys.stderr)\n"
               "import importlib.resources, tensorflow\n"  # the wrapped loader still answers as TensorFlow's
               "print(tensorflow.__loader__.get_filename('tensorflow').endswith('__init__.py'),\n"
               "      importlib.resources.files('tensorflow').joinpath('__init__.py').is_file())\n")
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.splitlines()[-2:] == ["True 0", "True True"], done.stdout[-500:] + done.stderr[-2000:]
    assert not ABSEIL_RECORD.search(done.stderr), done.stderr[-2000:]
    assert "stderr still works" in done.stderr
    plain = subprocess.run([sys.executable, "-c", "import tensorflow as tf; tf.config.list_physical_devices()"],
                           cwd=ROOT, env={**env, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True,
                           timeout=120)
    assert ABSEIL_RECORD.search(plain.stderr), plain.stderr[-2000:]
