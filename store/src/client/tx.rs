//! A transaction handle.

use super::{Client, Store, XsClientError};
use crate::msg::{Request, Response};
use crate::transport::Transport;

/// An open XenStore transaction (`XS_TRANSACTION_START`). Its [`Store`] operations read and
/// write the transaction's copy of the store; [`commit`](Self::commit) applies them or fails
/// with `EAGAIN` if another change intervened. Dropping an unfinished transaction aborts it
/// (best effort: the error, if any, is lost — abort explicitly to see it).
///
/// It borrows the client mutably, so nothing else uses the connection meanwhile. Usually made
/// by [`Client::transact`], which also retries on `EAGAIN`.
#[derive(Debug)]
pub struct Transaction<'c, T: Transport> {
    client: &'c mut Client<T>,
    id: u32,
    finished: bool,
}

impl<'c, T: Transport> Transaction<'c, T> {
    pub(crate) fn new(client: &'c mut Client<T>, id: u32) -> Self {
        Transaction {
            client,
            id,
            finished: false,
        }
    }

    /// The transaction id (the `tx_id` of its requests).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// `XS_TRANSACTION_END T`: commit. `Err(Xs(EAGAIN))` if it conflicted (start again).
    pub fn commit(mut self) -> Result<(), XsClientError> {
        self.finished = true;
        self.client.transaction_end(self.id, true)
    }

    /// `XS_TRANSACTION_END F`: discard every change.
    pub fn abort(mut self) -> Result<(), XsClientError> {
        self.finished = true;
        self.client.transaction_end(self.id, false)
    }
}

impl<T: Transport> Store for Transaction<'_, T> {
    fn call(&mut self, req: &Request) -> Result<Response, XsClientError> {
        self.client.request(self.id, req)
    }
}

impl<T: Transport> Drop for Transaction<'_, T> {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.client.transaction_end(self.id, false);
        }
    }
}
