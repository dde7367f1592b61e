//! HTTP/2 on the plugin's socket, for every gRPC client: the `:authority` a client sends
//! for a Unix socket is accepted whatever it is, as Go's gRPC server does.
//!
//! Why: gRPC C-core (Python, C++, Ruby, PHP grpcio) since 1.57 (grpc/grpc#33571) sends the
//! percent-encoded socket path as `:authority` for a `unix:` target (`%2Frun%2Fkms.sock`;
//! grpc-java and older clients send the bare path). h2, under hyper and tonic, builds an
//! `http::Uri` from every request and resets the stream with PROTOCOL_ERROR (code 1) when
//! `http::uri::Authority` refuses the value; `http` refuses `%` outside the userinfo and
//! `/` anywhere. h2 has no setting to relax that (hyperium/h2#487 is still open, and
//! hyperium/hyper#3750 was answered that such a value is not a valid authority). Go's
//! server does not parse the authority at all, which is why kube-apiserver (which sends
//! `localhost`) and grpcurl with `-authority` work.
//!
//! How: [`AnyAuthority`] sits between the Unix socket and hyper and rewrites the bytes
//! the client sends ([`rewrite`]): each header block is decoded with a mirror of the
//! client's HPACK table ([`hpack`]) and written again as plain literals, without an
//! `:authority` that `http` would refuse (the plugin routes by `:path` alone and never
//! reads the authority). Every other frame passes through untouched, and what h2 writes
//! back is not touched at all.

pub mod hpack;
pub mod rewrite;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

pub use rewrite::HeaderRewriter;

/// How much is read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// A server-side connection whose incoming header blocks are rewritten (see the module).
#[derive(Debug)]
pub struct AnyAuthority<S> {
    inner: S,
    rewriter: HeaderRewriter,
    scratch: Box<[u8]>,
    /// Rewritten bytes not yet read by the server, from `out_at` on.
    out: Vec<u8>,
    out_at: usize,
    eof: bool,
    logged_drop: bool,
}

impl<S> AnyAuthority<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: HeaderRewriter::new(),
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
            out: Vec::new(),
            out_at: 0,
            eof: false,
            logged_drop: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AnyAuthority<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_at < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_at);
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                this.rewriter.finish(&mut this.out);
                continue;
            }
            if let Err(e) = this.rewriter.feed(read.filled(), &mut this.out) {
                tracing::warn!(error = %e, "closing a KMS socket connection: malformed HTTP/2 from the client");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
            if !this.logged_drop && this.rewriter.dropped_authorities() > 0 {
                this.logged_drop = true;
                tracing::debug!(
                    "a client sent an :authority h2 would refuse (gRPC C-core sends the socket path); ignoring it"
                );
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnyAuthority<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AnyAuthority<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}
