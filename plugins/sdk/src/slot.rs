//! Where [`export_store!`](crate::export_store) keeps the value `open` built. A component
//! instance runs one call at a time on one thread, so a thread-local holds it.

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;

use crate::Error;

thread_local! {
    static STORE: RefCell<Option<Rc<dyn Any>>> = const { RefCell::new(None) };
}

pub fn set<S: 'static>(store: S) {
    STORE.with(|slot| *slot.borrow_mut() = Some(Rc::new(store)));
}

/// Runs `f` on the stored value. It is cloned out first, so no borrow of the slot is held
/// while `f` runs.
pub fn with<S: 'static, T>(f: impl FnOnce(&S) -> Result<T, Error>) -> Result<T, Error> {
    let store = STORE.with(|slot| slot.borrow().clone());
    match store.as_deref().and_then(|s| s.downcast_ref::<S>()) {
        Some(store) => f(store),
        None => Err(Error::Other("open was not called".into())),
    }
}
