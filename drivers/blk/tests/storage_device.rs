//! `StorageDevice`: a storage of this domain (a `MemDisk`) as a `BlockDevice`, so application
//! code runs without a backend — the same requests, completions, errors and 512-byte units as
//! blkfront, checked here through the trait only.

use embedded_io::{Read, Seek, SeekFrom, Write};
use xen_blk::front::io::BlockIo;
use xen_blk::front::{BlkError, BlockDevice, Request, StorageDevice};
use xen_blk::storage::{MemDisk, ReadOnly};

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

#[test]
fn blocking_helpers_are_provided_over_run_and_reach_the_disk() {
    let mut dev = StorageDevice::new(MemDisk::new(8192));
    assert_eq!((dev.sector_size(), dev.sectors()), (512, 8192));
    // More than one request's worth: the provided write/read split it into runs.
    let data = pattern(dev.max_request_bytes() + 3 * 512, 1);
    dev.write(10, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    dev.read(10, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(
        &dev.storage().bytes()[10 * 512..][..data.len()],
        &data[..],
        "on the disk at sector 10"
    );
    dev.flush().unwrap();
    dev.discard(10, 8).unwrap();
    dev.read(10, &mut back[..4096]).unwrap();
    assert!(
        back[..4096].iter().all(|&b| b == 0),
        "discarded range reads zeros"
    );
}

#[test]
fn requests_in_flight_complete_with_their_tags_and_buffers() {
    let mut dev = StorageDevice::new(MemDisk::new(8192));
    for i in 0..8u64 {
        let mut b = dev.alloc_buffer(4096).unwrap();
        b.as_mut_slice().copy_from_slice(&pattern(4096, i as u8));
        dev.submit(
            100 + i,
            Request::Write {
                sector: i * 8,
                buf: b,
            },
        )
        .unwrap();
    }
    // A blocking call meanwhile keeps the others' completions for poll.
    dev.flush().unwrap();
    let mut done = Vec::new();
    dev.poll(&mut |c| done.push(c)).unwrap();
    let mut tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
    tags.sort();
    assert_eq!(tags, (100..108).collect::<Vec<_>>());
    assert!(done.iter().all(|c| c.result.is_ok() && c.buf.is_some()));
    // Read one back asynchronously: the completion carries the data.
    let b = dev.alloc_buffer(4096).unwrap();
    dev.submit(
        7,
        Request::Read {
            sector: 5 * 8,
            buf: b,
        },
    )
    .unwrap();
    let mut got = None;
    dev.poll(&mut |c| got = Some(c)).unwrap();
    let c = got.unwrap();
    assert_eq!((c.tag, c.result), (7, Ok(())));
    assert_eq!(c.buf.unwrap().as_slice(), &pattern(4096, 5)[..]);
}

#[test]
fn bad_requests_are_refused_as_blkfront_refuses_them() {
    let mut dev = StorageDevice::new(MemDisk::new(64).with_sector_size(4096));
    assert_eq!((dev.sector_size(), dev.sectors()), (4096, 64));
    let mut buf = vec![0u8; 4096];
    assert_eq!(dev.read(1, &mut buf), Err(BlkError::Misaligned));
    assert_eq!(dev.read(0, &mut buf[..512]), Err(BlkError::Misaligned));
    assert_eq!(dev.read(64, &mut buf), Err(BlkError::OutOfRange));
    dev.read(56, &mut buf).unwrap();
    // A refused request gives its buffer back.
    let b = dev.alloc_buffer(4096).unwrap();
    let r = dev
        .submit(1, Request::Read { sector: 3, buf: b })
        .unwrap_err();
    assert_eq!(r.error, BlkError::Misaligned);
    assert!(r.buf.is_some());
    let mut ro = StorageDevice::new(ReadOnly::new(MemDisk::new(64)));
    assert!(ro.read_only());
    assert_eq!(ro.write(0, &[1u8; 512]), Err(BlkError::ReadOnly));
    assert_eq!(ro.discard(0, 8), Err(BlkError::ReadOnly));
}

#[test]
fn the_byte_adapter_works_over_it() {
    let mut io = BlockIo::new(StorageDevice::new(MemDisk::new(64)));
    io.seek(SeekFrom::Start(1000)).unwrap();
    io.write_all(b"not on a sector boundary").unwrap();
    io.seek(SeekFrom::Start(1000)).unwrap();
    let mut b = [0u8; 24];
    io.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"not on a sector boundary");
    assert_eq!(
        &io.into_inner().into_storage().bytes()[1000..1024],
        b"not on a sector boundary"
    );
}
