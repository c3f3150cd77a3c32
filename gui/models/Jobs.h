// Background jobs for spkv-studio: work runs on a thread pool with a Cancel flag and a progress callback;
// its result comes back on the GUI thread. Starting a job under a name cancels the one running under it,
// whose result is then dropped. All HDF5 reading and aggregation go through here.
#pragma once
#include <QHash>
#include <QObject>
#include <QPointer>
#include <QString>
#include <QThreadPool>
#include <functional>
#include <memory>

#include "gui/models/GateData.h"

namespace spkv::gui {

class JobRunner : public QObject {
  Q_OBJECT
 public:
  explicit JobRunner(QObject* parent = nullptr);
  ~JobRunner() override;  // cancels every job and waits for them

  // work(cancel, progress) runs off the GUI thread; done(result) on it, unless superseded or cancelled.
  template <class R>
  void start(const QString& name, std::function<R(Cancel&, const Progress&)> work, std::function<void(R&)> done) {
    auto result = std::make_shared<R>();
    launch(name, [work, result](Cancel& c, const Progress& p) { *result = work(c, p); }, [done, result] { done(*result); });
  }
  void cancel(const QString& name);
  void cancelAll();
  bool busy() const { return !m_running.isEmpty(); }
  bool waitIdle(int timeout_ms);  // processes events until no job runs (tests, benchmarks)

 signals:
  void progress(const QString& name, double fraction);
  void finished(const QString& name);
  void failed(const QString& name, const QString& message);
  void busyChanged(bool busy);

 private:
  void launch(const QString& name, std::function<void(Cancel&, const Progress&)> work, std::function<void()> done);
  QThreadPool m_pool;
  QHash<QString, std::shared_ptr<Cancel>> m_running;
};

}  // namespace spkv::gui
