//! Byte pipes that let one pass over a file run on two threads, or alongside a network
//! transfer: [`PipeWriter`] cuts what is written into blocks and hands them over a bounded
//! channel, [`PipeReader`] reads those blocks back as one stream, and [`BlockingPipe`] does
//! the same for blocks sent from async code. A closed sender is the end of the stream, so
//! a reader never blocks on a writer that failed. Memory: the channel's bound times the
//! block size.

use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use bytes::Bytes;

/// Bytes per block handed over (the data path's chunk size).
pub const PIPE_BLOCK: usize = 1 << 20;
/// Blocks in flight between the two ends.
pub const PIPE_DEPTH: usize = 4;

/// A writer and a reader joined by a bounded channel of blocks.
pub fn pipe() -> (PipeWriter, PipeReader) {
    let (tx, rx) = sync_channel(PIPE_DEPTH);
    (
        PipeWriter {
            tx,
            block: Vec::with_capacity(PIPE_BLOCK),
        },
        PipeReader {
            rx,
            current: Bytes::new(),
        },
    )
}

/// The sending end: buffers up to [`PIPE_BLOCK`] bytes, then sends them; dropping it (after
/// [`Write::flush`]) ends the stream.
pub struct PipeWriter {
    tx: SyncSender<Bytes>,
    block: Vec<u8>,
}

impl PipeWriter {
    fn send_block(&mut self) -> io::Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(PIPE_BLOCK));
        self.tx
            .send(Bytes::from(block))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the pipe's reader stopped"))
    }

    /// Hands `block` on as it is (no copy), after the bytes written before it.
    pub fn send(&mut self, block: Bytes) -> io::Result<()> {
        self.send_block()?;
        if block.is_empty() {
            return Ok(());
        }
        self.tx
            .send(block)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the pipe's reader stopped"))
    }
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = PIPE_BLOCK - self.block.len();
        let taken = buf.len().min(room);
        self.block.extend_from_slice(&buf[..taken]);
        if self.block.len() == PIPE_BLOCK {
            self.send_block()?;
        }
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_block()
    }
}

/// The receiving end: the blocks in order, then end of stream once every sender is gone.
pub struct PipeReader {
    rx: Receiver<Bytes>,
    current: Bytes,
}

impl PipeReader {
    /// The blocks themselves, in order, until every sender is gone (no copy).
    pub fn blocks(self) -> impl Iterator<Item = Bytes> {
        self.rx.into_iter()
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.recv() {
                Ok(block) => self.current = block,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// A blocking reader of blocks sent from async code (a transfer's chunks as they arrive).
pub struct BlockingPipe {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl BlockingPipe {
    /// The async sending end and the blocking reader of at most [`PIPE_DEPTH`] blocks in
    /// flight.
    pub fn new() -> (tokio::sync::mpsc::Sender<Bytes>, BlockingPipe) {
        let (tx, rx) = tokio::sync::mpsc::channel(PIPE_DEPTH);
        (
            tx,
            BlockingPipe {
                rx,
                current: Bytes::new(),
            },
        )
    }
}

impl Read for BlockingPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(block) => self.current = block,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_come_out_in_order_and_the_end_is_the_writers_drop() {
        let data: Vec<u8> = (0..3 * PIPE_BLOCK + 17).map(|i| (i % 253) as u8).collect();
        let (mut writer, mut reader) = pipe();
        let sent = data.clone();
        let sender = std::thread::spawn(move || {
            for piece in sent.chunks(70_001) {
                writer.write_all(piece).unwrap();
            }
            writer.flush().unwrap();
        });
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        sender.join().unwrap();
        assert_eq!(got, data);
    }

    #[test]
    fn blocks_sent_whole_keep_their_place_after_written_bytes() {
        let (mut writer, mut reader) = pipe();
        writer.write_all(b"ab").unwrap();
        writer.send(Bytes::from_static(b"cd")).unwrap();
        writer.send(Bytes::new()).unwrap();
        writer.write_all(b"e").unwrap();
        writer.flush().unwrap();
        drop(writer);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"abcde");
    }

    #[test]
    fn a_stopped_reader_is_a_broken_pipe_not_a_hang() {
        let (mut writer, reader) = pipe();
        drop(reader);
        let err = writer.write_all(&vec![0u8; 2 * PIPE_BLOCK]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }

    #[tokio::test]
    async fn async_blocks_are_read_on_a_blocking_thread() {
        let (tx, mut reader) = BlockingPipe::new();
        let read = tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).map(|_| got)
        });
        for piece in [&b"abc"[..], b"", b"defg"] {
            tx.send(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        drop(tx);
        assert_eq!(read.await.unwrap().unwrap(), b"abcdefg");
    }
}
