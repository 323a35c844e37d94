"""A pytest plugin for the nbval smoke run: records each executed cell's source and output MIME types into the
JSON file named by $OSESSL_NBVAL_OUTPUTS, so that tests can check what a reader would see (figures as image/png)
without executing the notebooks a second time."""
import json
import os


def pytest_runtest_makereport(item, call):
    path = os.environ.get("OSESSL_NBVAL_OUTPUTS")
    if not path or call.when != "call" or getattr(item, "test_outputs", None) is None:
        return
    record = {"notebook": item.fspath.purebasename, "cell": item.cell_num, "source": item.cell.source,
              "mimes": sorted({m for out in item.test_outputs for m in out.get("data", {})})}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
