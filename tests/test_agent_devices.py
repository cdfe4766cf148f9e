"""Agents per GPU: names a user reads, and the device each agent's own process uses."""

from kiln._agent import agent_name, local_device


def test_each_gpu_of_a_node_has_its_own_agent_name():
    assert agent_name("gpu1", "cuda:0") == "kiln-agent:gpu1:gpu0"
    assert agent_name("gpu1", "cuda:1") == "kiln-agent:gpu1:gpu1"
    assert agent_name("cpu-box", "cpu") == "kiln-agent:cpu-box:cpu"


def test_a_gpu_agent_pinned_by_ray_uses_the_one_gpu_it_sees(monkeypatch):
    # Ray gives the agent of the node's second GPU CUDA_VISIBLE_DEVICES=1: inside that
    # process the GPU is cuda:0, and cuda:1 would not exist.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert local_device("cuda:1") == "cuda:0"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert local_device("cuda:1") == "cuda:1"
    assert local_device("cpu") == "cpu"
