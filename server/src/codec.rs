//! The protobuf codec of terad's services and clients: prost's decoder, and an encoder that
//! writes the message into a plain byte vector first, then into tonic's buffer in one copy.
//! prost writes field by field, a varint a byte at a time, and every byte written straight
//! into tonic's `EncodeBuf` went through `BytesMut::put_slice` (a capacity check and a copy
//! call per byte): for a listing of 100 entries (about 15 KB) that was a sixth of terad's
//! CPU. The vector is each thread's own and is kept between calls, so it costs no
//! allocation once it has grown to the largest message the thread sends.
//!
//! The decoder reads a message from one contiguous slice when it has it whole (it nearly
//! always does): prost then parses a plain `&[u8]`, whose every step is a re-slice, instead
//! of going through tonic's `DecodeBuf` over a `BytesMut`, whose every varint and string
//! advances the buffer with its bookkeeping. That was a seventh of `teractl bench`'s CPU on
//! 100-entry listings.
//!
//! Both directions also start each call's buffer at [`START_BUFFER`] bytes instead of tonic's
//! 8 KiB (a buffer grows when a message needs it). Most messages here are a few hundred
//! bytes, and with glibc's allocator every request of 1 KiB or more first consolidates the
//! small free chunks (`malloc_consolidate`), which two 8 KiB buffers per call did every call.

use crate::wire::ListResponse;
use prost::bytes::Buf;
use prost::Message;
use std::cell::RefCell;
use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// A thread's scratch vector is given back to the allocator past this size, so that one huge
/// message does not pin its memory for the thread's life.
const SCRATCH_KEEP: usize = 1 << 20;

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Where each call's encode and decode buffers start (tonic's default is 8 KiB).
pub const START_BUFFER: usize = 512;

/// tonic's default: a stream's encoder hands over what it has once it holds this much.
const YIELD_THRESHOLD: usize = 32 << 10;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(START_BUFFER, YIELD_THRESHOLD)
}

/// The codec the generated services and clients use (build.rs names it).
#[derive(Debug, Clone)]
pub struct TeraCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for TeraCodec<T, U> {
    fn default() -> Self {
        TeraCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for TeraCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ScratchEncoder<T>;
    type Decoder = SliceDecoder<U>;

    fn encoder(&mut self) -> ScratchEncoder<T> {
        ScratchEncoder { _pd: PhantomData }
    }

    fn decoder(&mut self) -> SliceDecoder<U> {
        SliceDecoder { _pd: PhantomData }
    }
}

/// Encodes a message through the thread's scratch vector (see the module docs).
#[derive(Debug, Clone)]
pub struct ScratchEncoder<T> {
    _pd: PhantomData<T>,
}

impl<T: Message + 'static> Encoder for ScratchEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // A listing built by `wire::ListBuilder` is its entries' bytes already: two slices
        // straight into the buffer, sized first, with no copy through the scratch vector.
        if let Some(listing) = (&item as &dyn std::any::Any).downcast_ref::<ListResponse>() {
            if listing.is_pre_encoded() {
                buf.reserve(listing.encoded_len());
                listing.encode_raw(buf);
                return Ok(());
            }
        }
        SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut v) => {
                v.clear();
                item.encode_raw(&mut *v);
                prost::bytes::BufMut::put_slice(buf, &v);
                if v.capacity() > SCRATCH_KEEP {
                    *v = Vec::new();
                }
            }
            // Only a re-entrant encode on this thread could find it taken; encode directly.
            Err(_) => item.encode_raw(buf),
        });
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// Decodes a message from its bytes as one slice (see the module docs).
#[derive(Debug, Clone)]
pub struct SliceDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for SliceDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let n = buf.remaining();
        let item = if buf.chunk().len() == n {
            let item = U::decode(buf.chunk());
            buf.advance(n);
            item
        } else {
            U::decode(buf)
        };
        // As tonic-prost does: a message that does not parse is INTERNAL.
        item.map(Some).map_err(|e| Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}
