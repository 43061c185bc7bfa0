"""Whether this machine can listen at an address: checked before a program starts the work
that would end in the bind (the training processes' rendezvous, the web app's server)."""
import errno
import socket


def listen_problem(family: int, address: tuple) -> str:
    """Why a server cannot listen at ``address`` (a ``socket.bind`` address of ``family``):
    empty when it can. Binds with ``SO_REUSEADDR`` as torch's TCPStore and Gradio do, so a port
    a finished run left in TIME_WAIT counts as free and a listening one does not."""
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
    except OSError as exc:  # also a family this machine has no support for (IPv6 switched off)
        if exc.errno == errno.EADDRINUSE:
            return f"port {address[1]} is in use (by another run or program)"
        if exc.errno == errno.EADDRNOTAVAIL:
            return f"{address[0]} is not an address of this machine"
        if exc.errno == errno.EACCES:
            return f"port {address[1]} needs privileges (ports below 1024); use a higher one"
        return f"cannot listen at {address[0]}:{address[1]} ({exc.strerror})"
    return ""
