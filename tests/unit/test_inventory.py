"""How the cloud's inventory (nova + placement under the openstack driver) bounds
placement and extends node views; the real reading is tested on the deploy test bed
(tests/deploy/test_openstack_driver.py)."""
from mec_conpaas.db import models
from mec_conpaas.manager import inventory


def host(up=True, memory_mb_free=1024, vcpus_free=8):
    return {"up": up, "vcpus": 8, "vcpus_free": vcpus_free, "memory_mb": 4096,
            "memory_mb_free": memory_mb_free}


def entry(used=1, max_instances=8):
    return {"max_instances": max_instances, "used": used, "up": True, "schedulable": True}


def test_free_memory_and_vcpus_bound_the_free_slots():
    # 1,000 MB free fits 7 more instances of 128 MB; 8 slots, 1 used.
    assert inventory.cap(entry(), host(memory_mb_free=1000), 128, 0.5)["max_instances"] == 8
    assert inventory.cap(entry(), host(memory_mb_free=300), 128, 0.5)["max_instances"] == 3
    # A 1.5-CPU instance takes a 2-vCPU flavor: 5 free vCPUs fit 2.
    assert inventory.cap(entry(), host(vcpus_free=5), 128, 1.5)["max_instances"] == 3
    # Over-allocated (placement says negative): nothing more, the used ones stay counted.
    assert inventory.cap(entry(used=4), host(memory_mb_free=-50), 128, 0.5)[
        "max_instances"] == 4


def test_a_host_the_cloud_calls_down_is_down():
    assert inventory.cap(entry(), host(up=False), 128, 0.5)["up"] is False


def test_views_get_their_hosts_and_unregistered_hosts_are_added():
    nodes = [models.Node(name="ap-1", hostname="ap-1"), models.Node(name="x", hostname="ap-2")]
    views = [{"name": "ap-1"}, {"name": "x"}]
    cloud = {"ap-1": host(), "ap-2": host(memory_mb_free=5), "ap-3": host(up=False)}
    out = inventory.annotate(views, nodes, cloud)
    assert [v["name"] for v in out] == ["ap-1", "x", "ap-3"]
    assert out[1]["cloud"]["memory_mb_free"] == 5 and out[1]["registered"] is True
    assert out[2]["state"] == "down" and out[2]["registered"] is False
    assert out[2]["schedulable"] is False and "no node agent" in out[2]["disabled_reason"]
    # No cloud inventory (the lxc driver): views as they were.
    assert inventory.annotate([{"name": "ap-1"}], nodes[:1], None) == [{"name": "ap-1"}]
