//! A SWIM frame: foca's packet, then the sender's coordinate.
//!
//! `[u16 big-endian packet length][packet][postcard coordinate, optional]`.

use mesh_proto::codec;
use mesh_proto::coordinate::Coordinate;

/// Largest coordinate trailer accepted.
const MAX_COORDINATE: usize = 256;
/// Bytes of a datagram kept for the frame (length and coordinate:
/// 2 + about 90).
pub const RESERVED: usize = 128;

/// Frames `packet` with `coordinate`.
pub fn join(packet: &[u8], coordinate: Option<&Coordinate>) -> Vec<u8> {
    let trailer = coordinate
        .and_then(|c| codec::encode(c).ok())
        .unwrap_or_default();
    let len = u16::try_from(packet.len()).unwrap_or(u16::MAX);
    let mut frame = Vec::with_capacity(2 + packet.len() + trailer.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&packet[..usize::from(len)]);
    frame.extend_from_slice(&trailer);
    frame
}

/// The packet and the coordinate of a frame; None when malformed.
pub fn split(frame: &[u8]) -> Option<(&[u8], Option<Coordinate>)> {
    let len = usize::from(u16::from_be_bytes([*frame.first()?, *frame.get(1)?]));
    let packet = frame.get(2..2 + len)?;
    let trailer = &frame[2 + len..];
    let coordinate = if trailer.is_empty() {
        None
    } else {
        codec::decode::<Coordinate>(trailer, MAX_COORDINATE).ok()
    };
    Some((packet, coordinate))
}
