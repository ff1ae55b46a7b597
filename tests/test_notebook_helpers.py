"""ldmcourse.notebook: zoo output without machine paths."""

from types import SimpleNamespace

from ldmcourse import notebook, zoo


def test_rel_writes_checkout_and_zoo_paths_relative(monkeypatch, tmp_path):
    monkeypatch.delenv("LDMCOURSE_ZOO", raising=False)
    ck = notebook.CHECKOUT
    assert notebook.rel(f"saved {ck}/benchmarks/results/x.json") == "saved benchmarks/results/x.json"
    monkeypatch.setenv("LDMCOURSE_ZOO", str(tmp_path / "zoo"))
    assert zoo.root() == tmp_path / "zoo"
    assert notebook.rel(f"ckpt {tmp_path}/zoo/ldm-cpu-abc/checkpoint.pt") == "ckpt $LDMCOURSE_ZOO/ldm-cpu-abc/checkpoint.pt"
    assert notebook.rel("no path here 1.5") == "no path here 1.5"


def test_describe_names_entry_time_machine_and_command(monkeypatch):
    monkeypatch.delenv("LDMCOURSE_ZOO", raising=False)
    rec = dict(entry="ldm-mnist5k", profile="cpu", key="abc", description="d", steps=2000, train_seconds=129.4,
               sessions=[{}], machine=dict(device="cpu", cpu_count=2, torch_threads=2, loadavg=[1.0, 1.0, 1.0]),
               command="ldmcourse zoo train ldm-mnist5k --profile cpu",
               train_command=f"ldmcourse train ldm --out {notebook.CHECKOUT}/runs/zoo/ldm-cpu-abc")
    text = notebook.describe(SimpleNamespace(zoo=rec))
    assert "2000 steps, 129 s of training in 1 session(s)" in text and "load average [1.0, 1.0, 1.0]" in text
    assert str(notebook.CHECKOUT) not in text and "--out runs/zoo/ldm-cpu-abc" in text
