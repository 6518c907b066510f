"""`python -m beam_pipeline --input GLOB --output_dir DIR ...`"""

from beam_pipeline.main import run

if __name__ == "__main__":
    report = run()
    raise SystemExit(0 if report["invariant_ok"] else 1)
