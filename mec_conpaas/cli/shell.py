"""mec-conpaas: the PaaS command line (object-command, like openstack)."""
import sys

from cliff import app
from cliff import commandmanager

from mec_conpaas.cli import client as client_mod


class MecConpaasApp(app.App):

    def __init__(self):
        super().__init__(description="MEC-ConPaaS mobile edge PaaS",
                         version="0.1.0",
                         command_manager=commandmanager.CommandManager(
                             "mec_conpaas.cli"),
                         deferred_help=True)
        self._client = None

    def build_option_parser(self, description, version, argparse_kwargs=None):
        # No prefix matching: "service migrate --to" must not be read as
        # the global "--token".
        argparse_kwargs = dict(argparse_kwargs or {}, allow_abbrev=False)
        parser = super().build_option_parser(description, version, argparse_kwargs)
        parser.add_argument("--url", help="manager URL (env MEC_CONPAAS_URL; "
                            "default from ~/.config/mec-conpaas/credentials.yaml)")
        parser.add_argument("--token", help="API token (env MEC_CONPAAS_TOKEN); "
                            "beats --os-cloud; MEC_CONPAAS_TOKEN beats OS_*")
        parser.add_argument("--os-cloud", metavar="NAME",
                            help="keystone credentials from this clouds.yaml entry "
                            "(env OS_CLOUD; or the OS_* variables of an openrc), "
                            "for a manager with [api] auth_strategy = keystone")
        parser.add_argument("--ca-cert", metavar="FILE",
                            help="deployment CA of an https:// manager (env "
                            "MEC_CONPAAS_CA_CERT; default the credentials file's "
                            "ca_cert)")
        return parser

    @property
    def client(self):
        if self._client is None:
            keystone = client_mod.keystone_for(self.options.token, self.options.os_cloud)
            self._client = client_mod.Client(self.options.url, self.options.token,
                                             keystone=keystone,
                                             ca_cert=self.options.ca_cert)
        return self._client

    def clean_up(self, cmd, result, err):
        if isinstance(err, client_mod.ApiError):
            # The message already says what to fix; no traceback.
            self.LOG.debug("API error %s", err.status)


def main(argv=None):
    return MecConpaasApp().run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
