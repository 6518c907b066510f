"""`python -m beam_pipeline --input GLOB --output_dir DIR ...`"""

import contextlib
import sys

from beam_pipeline.main import run

RUNNER_HELP = """
runner flags (passed through to Apache Beam; these are the common ones):
  --runner {DirectRunner,FnApiRunner,PortableRunner,FlinkRunner,DataflowRunner}
                        Default DirectRunner (Beam's local engine).
  --direct_num_workers N --direct_running_mode {in_memory,multi_threading,multi_processing}
                        Local parallelism.
  --job_endpoint HOST:PORT --environment_type {LOOPBACK,EXTERNAL,DOCKER}
  --environment_config ADDR
                        Portable runners (Flink/Spark job service, worker pools).
  --project --region --temp_location --staging_location --setup_file
  --sdk_container_image --max_num_workers --machine_type
                        Dataflow (see run_dataflow.sh).
"""

if __name__ == "__main__":
    if "-h" in sys.argv[1:] or "--help" in sys.argv[1:]:
        with contextlib.suppress(SystemExit):
            run(["--help"])
        print(RUNNER_HELP)
        raise SystemExit(0)
    report = run()
    raise SystemExit(0 if report["invariant_ok"] else 1)
