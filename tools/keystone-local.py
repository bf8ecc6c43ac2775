"""A throw-away keystone on 127.0.0.1, for tests and trying keystone auth.

    .venv-keystone/bin/python tools/keystone-local.py STATE_DIR PORT ADMIN_PASSWORD

Run with the keystone virtualenv tools/install-deps.sh makes (keystone from
PyPI). The first run in STATE_DIR writes keystone.conf (sqlite, fernet
tokens), creates the database and keys and bootstraps the ``admin`` user in
project ``admin`` (roles admin > member > reader, and ``service``); every run
then serves the identity API at http://127.0.0.1:PORT/v3 until killed. One
process does it all: keystone's imports are most of the time (about 5 s the
first time, 3 s a restart, on a 2-core machine).
"""
import os
import sys
import warnings


def main(state, port, password):
    conf = os.path.join(state, "keystone.conf")
    first = not os.path.exists(conf)
    if first:
        with open(conf + ".tmp", "w") as f:
            f.write("[DEFAULT]\nlog_file = %(s)s/keystone.log\n"
                    "[database]\nconnection = sqlite:///%(s)s/keystone.db\n"
                    "[token]\nprovider = fernet\n"
                    # bcrypt's cheapest: a test keystone, not a safe
                    "[identity]\npassword_hash_rounds = 4\n"
                    "[fernet_tokens]\nkey_repository = %(s)s/fernet-keys\n"
                    "[fernet_receipts]\nkey_repository = %(s)s/fernet-receipts\n"
                    "[credential]\nkey_repository = %(s)s/credential-keys\n"
                    % {"s": state})
    warnings.simplefilter("ignore")
    from keystone.cmd import cli
    if first:
        user = ["--keystone-user", "root", "--keystone-group", "root"]
        for args in (["db_sync"], ["fernet_setup"] + user,
                     ["credential_setup"] + user,
                     ["bootstrap", "--bootstrap-password", password,
                      "--bootstrap-public-url", "http://127.0.0.1:%d/v3" % port,
                      "--bootstrap-internal-url", "http://127.0.0.1:%d/v3" % port,
                      "--bootstrap-region-id", "RegionOne"]):
            cli.main(argv=["keystone-manage", "--config-file", conf + ".tmp"] + args)
            # keystone-manage is one command per process: forget this one.
            cli.CONF.reset()
            cli.CONF.unregister_opt(cli.command_opt)
        # Only a bootstrapped state has keystone.conf: a run that died half
        # way starts over.
        os.replace(conf + ".tmp", conf)
        # keystone serves only from a process that did not bootstrap (its
        # provider registry is locked by then): serve from a fresh one.
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), state,
                                  str(port), password])
    from keystone.server.flask import core
    from werkzeug import serving
    sys.argv[1:] = []  # keystone's configuration parses the command line
    app = core.initialize_application(name="public", config_files=[conf])
    print("keystone serving on http://127.0.0.1:%d/v3" % port, flush=True)
    serving.run_simple("127.0.0.1", port, app, threaded=True)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(os.path.abspath(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
