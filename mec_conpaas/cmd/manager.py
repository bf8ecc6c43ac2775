"""mec-conpaas-manager: the PaaS manager daemon on the master."""
import sys

from mec_conpaas import conf as conf_mod
from mec_conpaas.cmd import setup_logging


def main(argv=None):
    conf = conf_mod.parse_args(sys.argv[1:] if argv is None else argv,
                               prog="mec-conpaas-manager")
    setup_logging(conf)
    from mec_conpaas import exception
    from mec_conpaas.manager import service
    try:
        manager = service.Manager(conf)
    except exception.MecError as e:  # a configuration to fix, e.g. the driver
        sys.exit("mec-conpaas-manager: %s" % e.message)
    manager.serve()


if __name__ == "__main__":
    main()
