"""mec-conpaas-linkd: NFQUEUE delay line of one emulated access point."""
import argparse

from mec_conpaas.edge import linkd


def main(argv=None):
    parser = argparse.ArgumentParser(prog="mec-conpaas-linkd",
                                     description=linkd.__doc__)
    parser.add_argument("--queue", action="append", required=True,
                        metavar="NUM:DELAY_MS",
                        help="hold packets of NFQUEUE NUM for DELAY_MS")
    parser.add_argument("--status-file")
    args = parser.parse_args(argv)
    queues = {}
    for spec in args.queue:
        num, _, delay = spec.partition(":")
        queues[int(num)] = float(delay)
    linkd.DelayLine(queues, args.status_file).run()


if __name__ == "__main__":
    main()
