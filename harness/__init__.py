"""libvirt-alias-harness: proves against a real libvirtd that device aliases stay stable and
interface hot-plug works next to passthrough NICs."""
__version__ = "0.1.0"
